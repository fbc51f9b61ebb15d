"""MagCache (diffusers' MagCacheConfig) on DiT pipelines: FLUX, SD3, PixArt, QwenImage.

MagCache skips all blocks on a step when the accumulated error predicted from the model's magnitude ratios
(how the norm of the blocks' residual changes from step to step) is small. The ratios belong to a checkpoint:
diffusers ships FLUX.1's; for any other model run once with `cache.calibrate=true` (nothing is skipped, the
measured ratios land in run.json under `calibrated_mag_ratios`) and pass them back as `cache.mag_ratios=[...]`.
The number of steps is taken from the scheduler at each generation (the ratios are interpolated to it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from diffgentor.errors import ConfigError, UnsupportedError
from diffgentor.internals import hooks_by_name, wrap_mag_cache_calibration
from diffgentor.optimize.base import Conflict
from diffgentor.optimize.cache.base import CacheOptimizer, require_at_least
from diffgentor.optimize.cache.diffusers_hooks import HOOK_CACHE_CONFLICTS, HOOK_CACHE_TAG, install_hook_cache
from diffgentor.optimize.registry import register


def preset_ratios(family: str) -> Optional[list[float]]:
    """Magnitude ratios diffusers ships for a family's reference checkpoint (FLUX.1 only), else None."""
    if family != "flux":
        return None
    from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

    return [float(r) for r in FLUX_MAG_RATIOS]


@dataclass
class MagCacheSettings:
    """MagCache: skip every block on steps where the magnitude-ratio error model says the output barely moves.

    - `threshold` (default 0.06): the accumulated error (sum of |1 - product of ratios| since the last full
      step) under which a step is skipped. Higher skips more, drifts more.
    - `max_skip_steps` (default 3): at most this many consecutive skipped steps (K in the paper).
    - `retention_ratio` (default 0.2): this share of the first steps always computes (they fix the layout).
    - `mag_ratios` (default null: the family's shipped ratios; FLUX only): one ratio per step of a reference
      run of THIS checkpoint, e.g. from a calibration run; interpolated to the run's step count.
    - `calibrate` (default false): measure the ratios instead of skipping: nothing is skipped, and run.json's
      evidence holds `calibrated_mag_ratios` to pass back as `cache.mag_ratios`.
    """

    name: str = "mag_cache"
    threshold: float = 0.06
    max_skip_steps: int = 3
    retention_ratio: float = 0.2
    mag_ratios: Optional[List[float]] = None
    calibrate: bool = False


@register
class MagCache(CacheOptimizer):
    name = "mag_cache"
    families = frozenset({"flux", "sd3", "pixart", "qwenimage"})
    refused_because = "MagCache hooks DiT blocks its registry knows: UNets have none, Sana's are not registered"
    Settings = MagCacheSettings
    cache_tags = (HOOK_CACHE_TAG,)
    needs_cache_context = True
    no_skip_hint = "Raise cache.threshold or cache.max_skip_steps, or lower cache.retention_ratio."
    # Measured on shapes-flux: MagCache's block hooks are compiler-disabled, so the blocks run eager inside
    # them; regionally compiled blocks then compile nothing at all, and whole-model compile only the code
    # around the blocks.
    conflicts = HOOK_CACHE_CONFLICTS + (
        Conflict("compile:regional", "mag_cache", "error",
                 "MagCache runs the denoiser's blocks inside compiler-disabled hooks, so regional compile "
                 "compiles nothing; use compile.regional=false (only the code around the blocks compiles) "
                 "or another cache"),
        Conflict("compile:whole", "mag_cache", "warn",
                 "MagCache runs the denoiser's blocks inside compiler-disabled hooks: they stay eager, only "
                 "the code around them is compiled"),
    )

    def ratios(self, family: str) -> Optional[list[float]]:
        given = self.settings.mag_ratios
        return [float(r) for r in given] if given is not None else preset_ratios(family)

    def check_settings(self, family: str) -> None:
        s = self.settings
        require_at_least("threshold", s.threshold, 0.0)
        require_at_least("max_skip_steps", s.max_skip_steps, 0)
        if not 0.0 <= s.retention_ratio <= 1.0:
            raise ConfigError(f"cache.retention_ratio={s.retention_ratio!r}: must be within [0, 1]")
        if s.mag_ratios is not None and len(s.mag_ratios) < 2:
            raise ConfigError("cache.mag_ratios needs one ratio per step of a reference run (at least 2)")
        if not s.calibrate and self.ratios(family) is None:
            raise UnsupportedError(
                f"mag_cache on '{family}' needs magnitude ratios measured for this checkpoint (diffusers ships "
                "them for FLUX.1 only): run once with cache.calibrate=true, then pass the evidence's "
                "calibrated_mag_ratios as cache.mag_ratios=[...]")

    def build_config(self, pipe: Any) -> Any:
        from diffusers.hooks import MagCacheConfig

        s = self.settings
        self._base_ratios = None if s.calibrate else self.ratios(self.family)
        self._calibrated: list[float] = []
        return MagCacheConfig(threshold=float(s.threshold), max_skip_steps=int(s.max_skip_steps),
                              retention_ratio=float(s.retention_ratio), mag_ratios=self._base_ratios,
                              calibrate=bool(s.calibrate))

    def install(self, pipe: Any) -> Callable[[], None]:
        remove = install_hook_cache(self, self.build_config(pipe))
        self.tracker.on_generation(self._fit_to_steps)
        if self.settings.calibrate:
            self._record_calibration()
        return remove

    def _fit_to_steps(self, tracker: Any) -> None:
        """The hooks count steps against `num_inference_steps` (and reset at it): make it this run's count."""
        steps = tracker.num_inference_steps
        if not steps or steps == self.config.num_inference_steps:
            return
        self.config.num_inference_steps = steps
        if self._base_ratios is not None:
            import torch
            from diffusers.hooks.mag_cache import nearest_interp

            self.config.mag_ratios = nearest_interp(torch.tensor(self._base_ratios), steps)

    def _record_calibration(self) -> None:
        """Keep the ratios the tail hook measures (it logs them, then clears them at the last step)."""
        from diffusers.hooks.mag_cache import MagCacheBlockHook

        def record(state: Any) -> None:
            self._calibrated = [round(float(r), 5) for r in state.calibration_ratios]

        for module in self.denoiser.modules():
            for hook in hooks_by_name(module).values():
                if isinstance(hook, MagCacheBlockHook) and hook.is_tail:
                    wrap_mag_cache_calibration(hook, record)

    def cache_evidence(self, pipe: Any) -> dict:
        evidence: dict = {"num_inference_steps": self.config.num_inference_steps,
                          "ratios_source": "calibration run" if self.settings.calibrate
                          else "cache.mag_ratios" if self.settings.mag_ratios is not None
                          else f"diffusers preset ({self.family})"}
        if self.settings.calibrate:
            evidence["calibrated_mag_ratios"] = self._calibrated
        return evidence

    def no_skip_advice(self) -> str:
        if self.settings.calibrate:
            return ("Expected in a calibration run (cache.calibrate=true): pass calibrated_mag_ratios as "
                    "cache.mag_ratios=[...] to cache with them.")
        return self.no_skip_hint
