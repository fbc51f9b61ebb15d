"""Does skipped compute turn into saved time? Each cache's latency ratio beside its measured compute fraction.

On the embedded tiny FLUX (every DiT cache), the trained shapes-flux (every DiT cache at its defaults) and tiny
SD / SDXL (DeepCache), 28 steps: the uncached pipeline
and each cache run in interleaved rounds on ONE loaded pipeline (cache applied before its call and removed
after it, so the noise of a shared machine hits all alike and removal is exercised every round). Printed as a
markdown table: the fastest round's denoiser time (all hooks included) and pipeline time relative to no cache, and
the evidence's `denoiser_compute_fraction` / `compute_fraction` (MACs that ran / MACs a full run would run).
`time/compute` near 1 means the cache's own overhead is small; the target is within 10%.

Settings are the defaults, except where the random-weight testbed needs looser ones to skip at all (marked *).
Random weights: these ratios say how well skipping converts into time on toy shapes, not image quality.

Run: python benchmarks/caches.py [--rounds 5] [--steps 28] [--size 64] [--only flux,shapes] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parent.parent
PROMPT = "a small red circle on a blue background"


@dataclass
class Case:
    label: str
    testbed: str
    #: Builds a fresh optimizer (None: the uncached baseline).
    make: Optional[Callable[[], Any]] = None
    pipeline_s: list[float] = field(default_factory=list)
    denoiser_s: list[float] = field(default_factory=list)
    evidence: dict = field(default_factory=dict)


def cases(only: Optional[set[str]]) -> list[Case]:
    from diffgentor.optimize.cache.base import CacheOptimizer
    from diffgentor.optimize.cache.cache_dit import CacheDit, CacheDitSettings
    from diffgentor.optimize.cache.deep_cache import DeepCache, DeepCacheSettings
    from diffgentor.optimize.cache.faster_cache import FasterCache, FasterCacheSettings
    from diffgentor.optimize.cache.first_block_cache import FirstBlockCache, FirstBlockCacheSettings
    from diffgentor.optimize.cache.mag_cache import MagCache, MagCacheSettings
    from diffgentor.optimize.cache.pab import PabSettings, PyramidAttentionBroadcast
    from diffgentor.optimize.cache.taylor_seer import TaylorSeer, TaylorSeerSettings

    class MeasurementOnly(CacheOptimizer):
        """The counting and step tracking every cache carries, with no cache: their cost alone."""

        name = "measurement only"

        def install(self, pipe: Any) -> Callable[[], None]:
            return lambda: None

    table = {
        "flux": [
            Case("no cache", "tiny-flux"),
            Case("measurement only (counting hooks)", "tiny-flux", lambda: MeasurementOnly()),
            Case("first_block_cache threshold=0.2 (seed default)", "tiny-flux",
                 lambda: FirstBlockCache(FirstBlockCacheSettings())),
            Case("first_block_cache threshold=0.5 *", "tiny-flux",
                 lambda: FirstBlockCache(FirstBlockCacheSettings(threshold=0.5))),
            Case("pab (2, [100, 800])", "tiny-flux", lambda: PyramidAttentionBroadcast(PabSettings())),
            Case("faster_cache (FLUX defaults)", "tiny-flux", lambda: FasterCache(FasterCacheSettings())),
            Case("taylor_seer interval=3", "tiny-flux", lambda: TaylorSeer(TaylorSeerSettings())),
            Case("taylor_seer interval=3 lite", "tiny-flux",
                 lambda: TaylorSeer(TaylorSeerSettings(use_lite_mode=True))),
            Case("mag_cache (FLUX ratios)", "tiny-flux", lambda: MagCache(MagCacheSettings())),
            Case("cache_dit F1B0 threshold=0.3 *", "tiny-flux",
                 lambda: CacheDit(CacheDitSettings(Fn_compute_blocks=1, residual_diff_threshold=0.3))),
        ],
        # the trained default model: every cache at its default settings
        "shapes": [
            Case("no cache", "shapes-flux"),
            Case("first_block_cache threshold=0.2 (seed default)", "shapes-flux",
                 lambda: FirstBlockCache(FirstBlockCacheSettings())),
            Case("pab (2, [100, 800])", "shapes-flux", lambda: PyramidAttentionBroadcast(PabSettings())),
            Case("faster_cache (FLUX defaults)", "shapes-flux", lambda: FasterCache(FasterCacheSettings())),
            Case("taylor_seer interval=3", "shapes-flux", lambda: TaylorSeer(TaylorSeerSettings())),
            Case("mag_cache (FLUX ratios)", "shapes-flux", lambda: MagCache(MagCacheSettings())),
            Case("cache_dit F1B0 threshold=0.08", "shapes-flux",
                 lambda: CacheDit(CacheDitSettings(Fn_compute_blocks=1))),
        ],
        "sd": [
            Case("no cache", "tiny-sd"),
            Case("deep_cache interval=3 branch=0", "tiny-sd", lambda: DeepCache(DeepCacheSettings())),
        ],
        "sdxl": [
            Case("no cache", "tiny-sdxl"),
            Case("deep_cache interval=3 branch=0", "tiny-sdxl", lambda: DeepCache(DeepCacheSettings())),
        ],
    }
    return [case for family, group in table.items() if only is None or family in only for case in group]


class DenoiserTimer:
    """Wall time inside the denoiser's calls, around every hook (first pre-hook, last post-hook)."""

    def __init__(self, denoiser: Any):
        self.total_s = 0.0
        self._start = 0.0
        self._handles = [denoiser.register_forward_pre_hook(self._begin, prepend=True),
                         denoiser.register_forward_hook(self._end)]

    def _begin(self, *_: Any) -> None:
        self._start = time.perf_counter()

    def _end(self, *_: Any) -> None:
        self.total_s += time.perf_counter() - self._start

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def load(testbed: str, cache_dir: Path) -> Any:
    import torch
    from diffusers import DiffusionPipeline

    from diffgentor.testbed import materialize

    pipe = DiffusionPipeline.from_pretrained(str(materialize(testbed, cache_dir)), torch_dtype=torch.float32,
                                             use_safetensors=True)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_settings(testbed: str) -> tuple[float, dict]:
    """The guidance scale and extra call arguments `python -m diffgentor model=TESTBED` uses (its model entry)."""
    from omegaconf import OmegaConf

    entry = OmegaConf.load(REPO / "conf" / "model" / f"{testbed}.yaml")
    return float(entry.guidance_scale), OmegaConf.to_container(entry.get("call_kwargs") or OmegaConf.create())


def generate(pipe: Any, testbed: str, steps: int, size: int) -> tuple[float, float]:
    """One timed generation: (pipeline seconds, seconds inside the denoiser)."""
    import torch

    guidance_scale, call_kwargs = call_settings(testbed)
    denoiser = getattr(pipe, "transformer", None) or pipe.unet
    timer = DenoiserTimer(denoiser)
    start = time.perf_counter()
    pipe(PROMPT, num_inference_steps=steps, guidance_scale=guidance_scale,
         height=size, width=size, generator=torch.Generator("cpu").manual_seed(0), output_type="latent",
         **call_kwargs)
    pipeline_s = time.perf_counter() - start
    timer.close()
    return pipeline_s, timer.total_s


def run_round(pipe: Any, group: list[Case], steps: int, size: int, family: str) -> None:
    for case in group:
        optimizer = case.make() if case.make else None
        if optimizer is not None:
            optimizer.check(family)
            optimizer.apply(pipe)
        try:
            pipeline_s, denoiser_s = generate(pipe, case.testbed, steps, size)
            if optimizer is not None:  # the evidence pass, untimed, as a run measures it
                optimizer.instrument(pipe)
                generate(pipe, case.testbed, steps, size)
                optimizer.uninstrument(pipe)
        finally:
            if optimizer is not None:
                case.evidence = optimizer.evidence(pipe)
                optimizer.remove(pipe)
        case.pipeline_s.append(pipeline_s)
        case.denoiser_s.append(denoiser_s)


def fastest(samples: list[float]) -> float:
    """The fastest round: on a shared machine other jobs only ever add time, so the minimum is the least
    contaminated estimate of each configuration's own cost (as timeit does)."""
    return min(samples)


def benchmark(all_cases: list[Case], rounds: int, steps: int, size: int, cache_dir: Path) -> list[dict]:
    from diffgentor.families import family_of_pipeline_class

    rows = []
    for testbed in dict.fromkeys(c.testbed for c in all_cases):
        group = [c for c in all_cases if c.testbed == testbed]
        pipe = load(testbed, cache_dir)
        family = family_of_pipeline_class(type(pipe).__name__)
        generate(pipe, testbed, steps, size)  # warmup: first-call allocations and lazy inits
        for _ in range(rounds):
            run_round(pipe, group, steps, size, family)
        base = group[0]
        base_pipe, base_den = fastest(base.pipeline_s), fastest(base.denoiser_s)
        for case in group:
            den_ratio = fastest(case.denoiser_s) / base_den
            e = case.evidence
            fraction = e.get("denoiser_compute_fraction", 1.0)
            rows.append({
                "testbed": testbed, "cache": case.label, "steps": steps, "size": size, "rounds": rounds,
                "pipeline_s": fastest(case.pipeline_s), "denoiser_s": fastest(case.denoiser_s),
                "pipeline_s_median": statistics.median(case.pipeline_s),
                "pipeline_ratio": fastest(case.pipeline_s) / base_pipe, "denoiser_ratio": den_ratio,
                "compute_fraction": e.get("compute_fraction", 1.0), "denoiser_compute_fraction": fraction,
                "time_over_compute": den_ratio / fraction if fraction else None,
                "skipped_nothing": e.get("skipped_nothing", False),
            })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| testbed | cache | denoiser time ratio | denoiser compute fraction | time / compute | "
             "block compute_fraction | pipeline time ratio |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = r["time_over_compute"]
        mark = "" if ratio is None or abs(ratio - 1) <= 0.10 else " (!)"
        note = " (skipped nothing)" if r["skipped_nothing"] else ""
        lines.append(f"| {r['testbed']} | {r['cache']}{note} | {r['denoiser_ratio']:.2f} | "
                     f"{r['denoiser_compute_fraction']:.2f} | {ratio:.2f}{mark} | {r['compute_fraction']:.2f} | "
                     f"{r['pipeline_ratio']:.2f} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved timed rounds (fastest taken)")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--size", type=int, default=64, help="image height and width in pixels")
    parser.add_argument("--only", default=None, help="comma-separated groups: flux,shapes,sd,sdxl")
    parser.add_argument("--cache-dir", default="~/.cache/diffgentor", help="where testbeds are built")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads; 1 (default) keeps a shared machine's contention out of the "
                             "numbers (2 threads fighting other jobs measured 5x slower and far noisier)")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import torch

    torch.set_num_threads(args.threads)

    only = set(args.only.split(",")) if args.only else None
    load_before = os.getloadavg()[0]
    rows = benchmark(cases(only), args.rounds, args.steps, args.size, Path(args.cache_dir).expanduser())
    print(f"{args.steps} steps, {args.size}x{args.size}, fastest of {args.rounds} interleaved rounds, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{load_before:.1f} -> {os.getloadavg()[0]:.1f} (a busy machine blurs small differences)\n")
    print(markdown(rows))
    print("\n(!) time/compute outside 0.90-1.10. * looser than the default, so that the random-weight "
          "testbed skips at all.")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
