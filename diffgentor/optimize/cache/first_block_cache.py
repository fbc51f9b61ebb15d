"""First Block Cache (diffusers' FirstBlockCacheConfig) on DiT pipelines: FLUX, SD3, PixArt, QwenImage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from diffgentor.optimize.cache.base import CacheOptimizer, require_at_least
from diffgentor.optimize.cache.diffusers_hooks import HOOK_CACHE_CONFLICTS, HOOK_CACHE_TAG, install_hook_cache
from diffgentor.optimize.base import EnvVariable
from diffgentor.optimize.registry import register


@dataclass
class FirstBlockCacheSettings:
    """First Block Cache: the first transformer block runs every step; when its output residual changed by
    less than `threshold` since the last fully computed step, all the other blocks are skipped and their
    cached residual is reused.

    - `threshold` (default 0.2, `DG_FBC_THRESHOLD`): the relative mean absolute change of the first block's
      residual under which a step is skipped. Higher skips more steps (faster) and drifts further from the
      uncached image; lower is more faithful; 0 never skips. The residual changes less per step the more
      steps there are: on the random-weight tiny FLUX, 0.2 skips nothing at 4-8 steps but ~40% of the block
      compute at 28 steps; 0.5 skips ~75% at any count (measured).
    """

    name: str = "first_block_cache"
    threshold: float = 0.2


@register
class FirstBlockCache(CacheOptimizer):
    name = "first_block_cache"
    families = frozenset({"flux", "sd3", "pixart", "qwenimage"})
    refused_because = ("diffusers' block hooks need DiT blocks its registry knows: UNets have none (IndexError), Sana's"
                       " are not registered")
    Settings = FirstBlockCacheSettings
    env_variables = (EnvVariable("DG_FBC_THRESHOLD", "threshold", "first_block_cache: residual similarity threshold"),)
    cache_tags = (HOOK_CACHE_TAG,)
    needs_cache_context = True
    conflicts = HOOK_CACHE_CONFLICTS
    no_skip_hint = "Raise cache.threshold (DG_FBC_THRESHOLD) to skip steps whose first-block residual changes more."

    def check_settings(self, family: str) -> None:
        require_at_least("threshold", self.settings.threshold, 0.0)

    def build_config(self, pipe: Any) -> Any:
        from diffusers.hooks import FirstBlockCacheConfig

        return FirstBlockCacheConfig(threshold=float(self.settings.threshold))

    def install(self, pipe: Any) -> Callable[[], None]:
        return install_hook_cache(self, self.build_config(pipe))
