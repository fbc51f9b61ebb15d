"""Generation with a timing protocol: warmup excluded, every timed call bracketed by device syncs (and
nothing else: the optimizers' instruments run in a separate evidence pass after the timed calls)."""

from __future__ import annotations

import contextlib
import inspect
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch

from diffgentor.accelerator import reset_peak_memory, synchronize
from diffgentor.errors import ConfigError, UnsupportedError
from diffgentor.prompts import ImageJob


@dataclass
class GenerationSettings:
    steps: int
    guidance_scale: float
    height: int
    width: int
    device: str
    warmup: int
    repeats: int
    extra_kwargs: dict = field(default_factory=dict)
    #: At least this many timed calls: fewer batches are each repeated more (see repeats_per_batch).
    min_timed_calls: int = 1
    #: torch.compile is applied: a recompile during the timed calls (after warmup) fails the run, and so does
    #: hitting dynamo's recompile limit (past it dynamo would run the code eager, silently).
    compiled: bool = False


@dataclass
class Timings:
    warmup_s: float = 0.0
    call_latencies_s: list[float] = field(default_factory=list)
    images_timed: int = 0
    #: Timed calls per batch (benchmark.repeats, raised to reach benchmark.min_timed_calls).
    repeats: int = 1
    #: With torch.compile: graphs and frames dynamo compiled during the timed calls (0 and 0 when clean).
    compiled_in_timed_calls: Optional[dict] = None

    def summary(self, steps: int) -> dict:
        """latency_s is per pipeline call (one batch); images_per_s over all timed calls."""
        lat = self.call_latencies_s
        compiled = ({} if self.compiled_in_timed_calls is None
                    else {"compiled_in_timed_calls": self.compiled_in_timed_calls})
        if not lat:
            return {"warmup_s": self.warmup_s, "latency_s": None, "images_per_s": None, "s_per_step": None,
                    **compiled}
        median = statistics.median(lat)
        return {
            **compiled,
            "warmup_s": self.warmup_s,
            "latency_s": {"median": median, "min": min(lat), "max": max(lat), "n": len(lat)},
            "images_per_s": self.images_timed / sum(lat),
            "timed_s": sum(lat),
            "s_per_step": median / steps,
        }


def _accepts(pipe: Any, name: str) -> bool:
    return name in inspect.signature(pipe.__call__).parameters


def call_kwargs(pipe: Any, batch: list[ImageJob], settings: GenerationSettings) -> dict:
    """Pipeline arguments for one batch: one generator per image so each image is reproducible alone."""
    kwargs = {
        "prompt": [job.prompt for job in batch],
        "num_inference_steps": settings.steps,
        "guidance_scale": settings.guidance_scale,
        "height": settings.height,
        "width": settings.width,
        "generator": [torch.Generator("cpu").manual_seed(job.seed) for job in batch],
        "output_type": "pil",
        **settings.extra_kwargs,
    }
    negatives = [job.negative_prompt for job in batch]
    if any(n is not None for n in negatives):
        if not _accepts(pipe, "negative_prompt"):
            raise ConfigError(f"negative_prompt: {type(pipe).__name__} takes no negative prompt; remove it")
        kwargs["negative_prompt"] = [n or "" for n in negatives]
    return kwargs


def run_batch(pipe: Any, batch: list[ImageJob], settings: GenerationSettings) -> tuple[list, float]:
    """One synchronised, timed pipeline call; returns the PIL images and the seconds it took."""
    kwargs = call_kwargs(pipe, batch, settings)
    synchronize(settings.device)
    start = time.perf_counter()
    images = pipe(**kwargs).images
    synchronize(settings.device)
    return images, time.perf_counter() - start


def repeats_per_batch(settings: GenerationSettings, n_batches: int) -> int:
    """`repeats`, raised so that all batches together make at least `min_timed_calls` timed calls: a latency
    measured once has no spread, and without one a difference cannot be told from noise."""
    return max(settings.repeats, -(-settings.min_timed_calls // max(n_batches, 1)))


def warmup_batches(batches: list[list[ImageJob]]) -> list[list[ImageJob]]:
    """The first batch of each batch size: a smaller last batch is another input shape, which a compiled
    pipeline would otherwise meet (and compile for) inside a timed call."""
    seen: dict[int, list[ImageJob]] = {}
    for batch in batches:
        seen.setdefault(len(batch), batch)
    return list(seen.values())


RECOMPILED = "Detected recompile when torch.compile stance is 'fail_on_recompile'"


@contextlib.contextmanager
def compile_guard(settings: GenerationSettings, timed: bool) -> Iterator[None]:
    """With torch.compile: the recompile limit is an error, not a silent fall back to eager; in the timed
    calls (`timed`, after a warmup) any recompile is an error too. Both become one line naming the cause."""
    if not settings.compiled:
        yield
        return
    import torch._dynamo.config as dynamo_config
    from torch._dynamo.exc import FailOnRecompileLimitHit

    stance = (torch.compiler.set_stance("fail_on_recompile") if timed and settings.warmup
              else contextlib.nullcontext())
    previous = dynamo_config.fail_on_recompile_limit_hit
    dynamo_config.fail_on_recompile_limit_hit = True
    try:
        with stance:
            yield
    except FailOnRecompileLimitHit as exc:
        raise UnsupportedError(
            f"compile: dynamo hit its recompile limit ({dynamo_config.recompile_limit}) "
            f"{'in a timed call' if timed else 'while warming up'}, past which it runs the code uncompiled; "
            "set TORCH_LOGS=recompiles to see why it recompiles") from exc
    except Exception as exc:  # noqa: BLE001 - only dynamo's fail_on_recompile error is translated
        if RECOMPILED not in str(exc):
            raise
        where = str(exc).split(RECOMPILED, 1)[1].split("\n")[0].strip(". ")
        raise UnsupportedError(f"compile: torch.compile recompiled during a timed call ({where}), so its "
                               "latency would include compiling; set TORCH_LOGS=recompiles to see why") from exc
    finally:
        dynamo_config.fail_on_recompile_limit_hit = previous


def generate(pipe: Any, batches: list[list[ImageJob]], settings: GenerationSettings,
             on_batch: Callable[[list[ImageJob], list, float], None],
             progress: Optional[Any] = None, before_timed: Optional[Callable[[], None]] = None) -> Timings:
    """Warm up on each batch size, then run every batch repeats_per_batch times; `on_batch` gets the images of the
    last repeat with the median latency of that batch, as soon as they exist (so a later failure keeps them).
    `before_timed` runs between the two (the optimizers take out what measured the warmup)."""
    timings = Timings()
    if settings.warmup and batches:
        start = time.perf_counter()
        with compile_guard(settings, timed=False):
            for _ in range(settings.warmup):
                for batch in warmup_batches(batches):
                    run_batch(pipe, batch, settings)
        timings.warmup_s = time.perf_counter() - start
    if before_timed is not None:
        before_timed()
    reset_peak_memory(settings.device)
    before = _compile_counts() if settings.compiled else None
    repeats = timings.repeats = repeats_per_batch(settings, len(batches))
    with compile_guard(settings, timed=True):
        for batch in batches:
            latencies = []
            for _ in range(repeats):
                images, seconds = run_batch(pipe, batch, settings)
                latencies.append(seconds)
            timings.call_latencies_s.extend(latencies)
            timings.images_timed += len(batch) * repeats
            on_batch(batch, images, statistics.median(latencies))
            if progress is not None:
                progress.update(len(batch))
    if before is not None:
        after = _compile_counts()
        timings.compiled_in_timed_calls = {key: after[key] - before[key] for key in before}
    return timings


def _compile_counts() -> dict:
    """dynamo's graph and frame counts (read between calls, never inside one)."""
    from diffgentor.optimize.compile import dynamo_counters

    counts = dynamo_counters()
    return {"graphs": counts["graphs"], "frames_compiled": counts["frames_compiled"]}

