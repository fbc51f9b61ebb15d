"""Loaded pipelines kept between the jobs of one process, so that a sweep loads each model once.

With real models loading dominates a sweep (FLUX.1-dev reads ~33 GB per job). Hydra's basic launcher runs a
multirun's jobs one after another in this process; a job whose weights are the same as the last job's (same
location, revision, variant, dtype and device) takes its pipeline instead of loading it again. A pipeline is
kept only after every optimization the job applied was removed from it (AppliedOptimizations.remove); one
that cannot be removed exactly, a job that failed, or an offloaded pipeline is dropped, and the next job
loads afresh and says why in run.json (`model_reused`, `model_reuse_reason`).

Never across processes: other launchers (joblib, submitit, SLURM) start their own, and a single run keeps
nothing.
"""

from __future__ import annotations

import gc
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class ModelKey:
    """What determines the loaded weights and where they are."""

    location: str
    revision: Optional[str]
    variant: Optional[str]
    dtype: str
    device: str


class LoadedModels:
    """At most `max_models` pipelines, the most recently kept last; why the last one of a key was dropped."""

    def __init__(self) -> None:
        self._pipes: OrderedDict[ModelKey, Any] = OrderedDict()
        self._dropped: dict[ModelKey, str] = {}

    def take(self, key: ModelKey, max_models: int) -> tuple[Optional[Any], str]:
        """The kept pipeline for `key` (removed from the store: a job that fails never leaves it behind), or
        None and why; without a match, the oldest are let go first so that loading stays within
        `max_models`."""
        if key in self._pipes:
            return self._pipes.pop(key), "same weights as an earlier job of this sweep"
        while self._pipes and len(self._pipes) >= max_models:
            self._pipes.popitem(last=False)
        gc.collect()
        return None, self._dropped.pop(key, "first job of this process to load these weights")

    def keep(self, key: ModelKey, pipe: Any) -> None:
        self._pipes[key] = pipe
        self._dropped.pop(key, None)

    def drop(self, key: ModelKey, reason: str) -> None:
        """Not kept; the next job with this key loads afresh and records `reason`."""
        self._pipes.pop(key, None)
        self._dropped[key] = reason


#: The process's store: one per process, as Hydra's basic launcher runs every job of a multirun here.
LOADED = LoadedModels()


def in_process_multirun() -> bool:
    """True inside a multirun job run by Hydra's basic launcher (the next job will run in this process)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from diffgentor.internals import BASIC_LAUNCHER

    if not HydraConfig.initialized():
        return False
    hydra_cfg = HydraConfig.get()
    return hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.launcher.get("_target_") == BASIC_LAUNCHER
