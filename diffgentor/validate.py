"""Range checks on the run's own values, all at once, before anything loads.

Hydra's schema already rejects a wrong type (`steps=abc`); this rejects values of the right type that no
pipeline can use (`steps=0`, `seed=-1`, `guidance_scale=nan`, a 10^6-pixel side) with one line per problem,
so a user fixes them in one go instead of meeting them one by one after a 30 GB load.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from diffgentor.errors import ConfigError

#: Upper bounds that no real pipeline or scheduler reaches (FLUX.1 and SD3 serve up to ~2 MP at 50 steps).
MAX_STEPS = 10_000
MAX_SIDE_PX = 16_384
MAX_IMAGES_PER_PROMPT = 100_000
SEED_LIMIT = 2**64  # torch.Generator.manual_seed takes 0 <= seed < 2**64


class InvalidConfigError(ConfigError):
    """One or more values out of range; `reasons` holds one line per value."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.reasons = list(reasons)


def _int_in(name: str, value: Any, low: int, high: Optional[int], hint: str) -> Optional[str]:
    if low <= value and (high is None or value <= high):
        return None
    upper = f" and <= {high}" if high is not None else ""
    return f"{name}={value}: must be >= {low}{upper}; {hint}"


def _finite(name: str, value: Optional[float], hint: str) -> Optional[str]:
    if value is None or math.isfinite(value):
        return None
    return f"{name}={value}: must be a finite number; {hint}"


def problems(run_cfg: Any) -> list[str]:
    """Every out-of-range value of a resolved RunConfig, one line each (empty: all fine)."""
    found = [
        _int_in("steps", run_cfg.steps, 1, MAX_STEPS, "e.g. steps=28"),
        _int_in("height", run_cfg.height, 1, MAX_SIDE_PX, "e.g. height=1024"),
        _int_in("width", run_cfg.width, 1, MAX_SIDE_PX, "e.g. width=1024"),
        _int_in("seed", run_cfg.seed, 0, SEED_LIMIT - 1, "seeds are 0 <= seed < 2**64"),
        _int_in("num_images_per_prompt", run_cfg.num_images_per_prompt, 1, MAX_IMAGES_PER_PROMPT,
                "e.g. num_images_per_prompt=1"),
        _int_in("batch_size", run_cfg.batch_size, 1, None, "e.g. batch_size=1"),
        _int_in("benchmark.warmup", run_cfg.benchmark.warmup, 0, None, "0 times the first call too"),
        _int_in("benchmark.repeats", run_cfg.benchmark.repeats, 1, None, "e.g. benchmark.repeats=3"),
        _int_in("benchmark.min_timed_calls", run_cfg.benchmark.min_timed_calls, 1, None,
                "e.g. benchmark.min_timed_calls=3 (1: no spread for a one-batch run)"),
        _int_in("reuse_model_max", run_cfg.reuse_model_max, 1, None,
                "e.g. reuse_model_max=1, or reuse_model=false to load every job afresh"),
        _finite("guidance_scale", run_cfg.guidance_scale, "e.g. guidance_scale=3.5"),
        _finite("true_cfg_scale", run_cfg.true_cfg_scale, "e.g. true_cfg_scale=4.0, or null"),
    ]
    if run_cfg.threads is not None:
        found.append(_int_in("threads", run_cfg.threads, 1, None,
                             "give a count >= 1, or null for OMP_NUM_THREADS / one per core"))
    if run_cfg.max_sequence_length is not None:
        found.append(_int_in("max_sequence_length", run_cfg.max_sequence_length, 1, None, "a token count"))
    return [problem for problem in found if problem]


def check_values(run_cfg: Any) -> None:
    """Raise InvalidConfigError naming every out-of-range value."""
    found = problems(run_cfg)
    if found:
        raise InvalidConfigError(found)
