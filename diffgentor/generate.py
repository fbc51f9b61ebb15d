"""Generation with a timing protocol: warmup excluded, every timed call bracketed by device syncs."""

from __future__ import annotations

import inspect
import resource
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from diffgentor.errors import ConfigError
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


@dataclass
class Timings:
    warmup_s: float = 0.0
    call_latencies_s: list[float] = field(default_factory=list)
    images_timed: int = 0

    def summary(self, steps: int) -> dict:
        """latency_s is per pipeline call (one batch); images_per_s over all timed calls."""
        lat = self.call_latencies_s
        if not lat:
            return {"warmup_s": self.warmup_s, "latency_s": None, "images_per_s": None, "s_per_step": None}
        median = statistics.median(lat)
        return {
            "warmup_s": self.warmup_s,
            "latency_s": {"median": median, "min": min(lat), "max": max(lat), "n": len(lat)},
            "images_per_s": self.images_timed / sum(lat),
            "s_per_step": median / steps,
        }


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> dict:
    """CUDA: max allocated since the reset before generation. CPU: the process's peak RSS (includes load)."""
    if device.startswith("cuda"):
        return {"peak_bytes": int(torch.cuda.max_memory_allocated()), "kind": "cuda_max_memory_allocated"}
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_bytes": int(rss_kib) * 1024, "kind": "process_peak_rss"}


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


def generate(pipe: Any, batches: list[list[ImageJob]], settings: GenerationSettings,
             on_batch: Callable[[list[ImageJob], list, float], None],
             progress: Optional[Any] = None) -> Timings:
    """Warm up on the first batch, then run every batch `repeats` times; `on_batch` gets the images of the
    last repeat with the median latency of that batch, as soon as they exist (so a later failure keeps them)."""
    timings = Timings()
    if settings.warmup and batches:
        start = time.perf_counter()
        for _ in range(settings.warmup):
            run_batch(pipe, batches[0], settings)
        timings.warmup_s = time.perf_counter() - start
    reset_peak_memory(settings.device)
    for batch in batches:
        latencies = []
        for _ in range(settings.repeats):
            images, seconds = run_batch(pipe, batch, settings)
            latencies.append(seconds)
        timings.call_latencies_s.extend(latencies)
        timings.images_timed += len(batch) * settings.repeats
        on_batch(batch, images, statistics.median(latencies))
        if progress is not None:
            progress.update(len(batch))
    return timings
