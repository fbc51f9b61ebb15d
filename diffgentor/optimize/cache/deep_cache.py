"""DeepCache (the DeepCache package's DeepCacheSDHelper) on UNet pipelines: SD 1.x/2.x and SDXL.

A UNet's deep features change slowly between steps: every `cache_interval` steps the whole UNet runs and the
output of one up-block branch is cached; in between only the shallow layers down to that branch run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from diffgentor.errors import UnsupportedError
from diffgentor.optimize.base import Conflict, EnvVariable
from diffgentor.optimize.cache.base import CacheOptimizer, require_at_least
from diffgentor.optimize.registry import register

#: DeepCache numbers the skip branches 3 per down block (its two layers and the downsampler).
BRANCHES_PER_BLOCK = 3


@dataclass
class DeepCacheSettings:
    """DeepCache: run the full UNet every N steps, only its shallow branch in between.

    - `cache_interval` (default 3, `DG_CACHE_INTERVAL`): N. Higher is faster and drifts more; 1 never caches.
    - `cache_branch_id` (default 0, `DG_CACHE_BRANCH_ID`): the skip branch whose deeper part is cached
      (3 per down block: block = id // 3, layer = id % 3). 0, the shallowest, skips the most work; higher ids
      recompute more layers on cached steps (slower, more faithful).
    """

    name: str = "deep_cache"
    cache_interval: int = 3
    cache_branch_id: int = 0


@register
class DeepCache(CacheOptimizer):
    name = "deep_cache"
    families = frozenset({"sd", "sdxl"})
    refused_because = "DeepCache caches the skip branches of a UNet; DiT pipelines have none"
    Settings = DeepCacheSettings
    env_variables = (EnvVariable("DG_CACHE_INTERVAL", "cache_interval", "deep_cache: steps between full computations"),
                     EnvVariable("DG_CACHE_BRANCH_ID", "cache_branch_id",
                                 "deep_cache: UNet branch whose output is cached"))
    requires = ("DeepCache", "DeepCache", "deepcache")
    no_skip_hint = "Raise cache.cache_interval (DG_CACHE_INTERVAL) above 1, and run more steps than it."
    # Measured on tiny-sd: with the whole UNet compiled, DeepCache's wrapper hands dynamo a fresh cached
    # feature object each call (guard "___stack0 got deallocated"), so every timed call recompiles;
    # regional compile (the UNet's blocks) is clean.
    conflicts = (
        Conflict("compile:whole", "deep_cache", "error",
                 "DeepCache's wrapper makes a whole compiled UNet recompile on every call; use "
                 "compile.regional=true with DeepCache"),
    )

    def check_settings(self, family: str) -> None:
        require_at_least("cache_interval", self.settings.cache_interval, 1)
        require_at_least("cache_branch_id", self.settings.cache_branch_id, 0)

    def install(self, pipe: Any) -> Callable[[], None]:
        from DeepCache import DeepCacheSDHelper

        branches = BRANCHES_PER_BLOCK * len(self.denoiser.down_blocks)
        if self.settings.cache_branch_id >= branches:
            raise UnsupportedError(f"cache.cache_branch_id={self.settings.cache_branch_id}: this UNet has "
                                   f"{branches} branches; use 0..{branches - 1}")
        self.helper = DeepCacheSDHelper(pipe=pipe)
        self.helper.set_params(cache_interval=int(self.settings.cache_interval),
                               cache_branch_id=int(self.settings.cache_branch_id))
        self.helper.enable()
        return self.helper.disable

    def cache_evidence(self, pipe: Any) -> dict:
        return {"branches": BRANCHES_PER_BLOCK * len(self.denoiser.down_blocks)}
