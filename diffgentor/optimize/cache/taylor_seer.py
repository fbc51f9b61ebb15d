"""TaylorSeer (diffusers' TaylorSeerCacheConfig) on DiT pipelines: FLUX, SD3, PixArt, QwenImage.

Hooked modules run fully every `cache_interval` steps and, in between, return a Taylor-series forecast of
their output from the last full computations. By default the attention modules are forecast (their MLPs still
run); lite mode forecasts only the final projection and skips every block outright.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from diffgentor.errors import ConfigError
from diffgentor.internals import hooks_by_name
from diffgentor.optimize.cache.base import CacheOptimizer, require_at_least
from diffgentor.optimize.cache.diffusers_hooks import HOOK_CACHE_CONFLICTS, HOOK_CACHE_TAG, install_hook_cache
from diffgentor.optimize.base import EnvVariable
from diffgentor.optimize.registry import register

DTYPES = ("bfloat16", "float16", "float32")
#: Default `cache_identifiers` where diffusers' (`^transformer_blocks.*attn`, matched whole) finds no module:
#: PixArt names its attentions attn1 (self) and attn2 (cross).
FAMILY_CACHE_IDENTIFIERS = {"pixart": [r"^transformer_blocks\.\d+\.attn[12]"]}


@dataclass
class TaylorSeerSettings:
    """TaylorSeer: forecast module outputs with a Taylor expansion between full computations.

    - `cache_interval` (default 3, `DG_CACHE_INTERVAL`): after the warmup, one full computation every N steps,
      forecasts in between. Higher is faster and drifts more.
    - `disable_cache_before_step` (default 3): steps 0..N-1 always compute (they build the Taylor factors).
      Lower skips earlier, with cruder forecasts.
    - `disable_cache_after_step` (default null: never): from this step on everything computes again, to keep
      the final detail-refining steps exact.
    - `max_order` (default 1): order of the expansion: 1 extrapolates linearly; 2 follows curvature at more
      memory and, on noisy trajectories, overshoot.
    - `taylor_factors_dtype` (default bfloat16): storage dtype of the factors (bfloat16, float16, float32):
      lower saves memory, float32 forecasts most exactly.
    - `use_lite_mode` (default false): skip whole blocks and forecast only the final projection: the largest
      saving and the largest drift. Overrides the identifiers below.
    - `cache_identifiers` (default null: diffusers' attention patterns; PixArt: attn1/attn2): regexes matched
      against whole module names; matching modules are forecast.
    - `skip_predict_identifiers` (default null): regexes of modules that return zeros instead of a forecast
      on forecast steps (for modules whose output is only added to a residual).
    """

    name: str = "taylor_seer"
    cache_interval: int = 3
    disable_cache_before_step: int = 3
    disable_cache_after_step: Optional[int] = None
    max_order: int = 1
    taylor_factors_dtype: str = "bfloat16"
    use_lite_mode: bool = False
    cache_identifiers: Optional[List[str]] = None
    skip_predict_identifiers: Optional[List[str]] = None


@register
class TaylorSeer(CacheOptimizer):
    name = "taylor_seer"
    families = frozenset({"flux", "sd3", "pixart", "qwenimage"})
    refused_because = "TaylorSeer hooks DiT blocks and attention by name; UNets and Sana are not wired"
    Settings = TaylorSeerSettings
    env_variables = (EnvVariable("DG_CACHE_INTERVAL", "cache_interval",
                                 "taylor_seer: steps between full computations"),)
    cache_tags = (HOOK_CACHE_TAG,)
    needs_cache_context = True
    conflicts = HOOK_CACHE_CONFLICTS
    no_skip_hint = ("Lower cache.disable_cache_before_step or run more steps than the warmup plus one "
                    "cache.cache_interval (DG_CACHE_INTERVAL).")

    def check_settings(self, family: str) -> None:
        s = self.settings
        require_at_least("cache_interval", s.cache_interval, 1)
        require_at_least("disable_cache_before_step", s.disable_cache_before_step, 0)
        require_at_least("max_order", s.max_order, 1)
        if s.taylor_factors_dtype not in DTYPES:
            raise ConfigError(f"cache.taylor_factors_dtype={s.taylor_factors_dtype!r}: use one of "
                              f"{', '.join(DTYPES)}")

    def cache_identifiers(self) -> Optional[list[str]]:
        if self.settings.cache_identifiers is not None:
            return list(self.settings.cache_identifiers)
        return FAMILY_CACHE_IDENTIFIERS.get(self.family)

    def build_config(self, pipe: Any) -> Any:
        import torch
        from diffusers import TaylorSeerCacheConfig

        s = self.settings
        skip = s.skip_predict_identifiers
        return TaylorSeerCacheConfig(
            cache_interval=int(s.cache_interval),
            disable_cache_before_step=int(s.disable_cache_before_step),
            disable_cache_after_step=s.disable_cache_after_step,
            max_order=int(s.max_order),
            taylor_factors_dtype=getattr(torch, s.taylor_factors_dtype),
            use_lite_mode=bool(s.use_lite_mode),
            cache_identifiers=self.cache_identifiers(),
            skip_predict_identifiers=list(skip) if skip is not None else None,
        )

    def install(self, pipe: Any) -> Callable[[], None]:
        return install_hook_cache(self, self.build_config(pipe))

    def cache_evidence(self, pipe: Any) -> dict:
        hooked = [name for name, module in self.denoiser.named_modules()
                  if "taylorseer_cache" in hooks_by_name(module)]
        return {"hooked_modules": len(hooked), "cache_identifiers": self.cache_identifiers(),
                "lite_mode": bool(self.settings.use_lite_mode)}
