"""Pyramid Attention Broadcast (diffusers' PyramidAttentionBroadcastConfig) on DiT pipelines: FLUX, SD3, PixArt.

PAB reads the current timestep through a callback: the pipeline's own `current_timestep` on FLUX; on SD3 and
PixArt, which keep none, the timestep the pipeline passes to its denoiser (context.DenoiseTracker).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

from diffgentor.optimize.cache.base import CacheOptimizer, require_at_least, require_range
from diffgentor.optimize.cache.diffusers_hooks import HOOK_CACHE_CONFLICTS, HOOK_CACHE_TAG, install_hook_cache
from diffgentor.optimize.base import EnvVariable
from diffgentor.optimize.registry import register


@dataclass
class PabSettings:
    """Pyramid Attention Broadcast: inside a timestep window, compute each self-attention only every N-th
    step and broadcast (reuse) its last output in between; the MLPs always run.

    - `spatial_skip_range` (default 2, `DG_PAB_SPATIAL_SKIP`): N for spatial self-attention: attention runs
      once every N steps inside the window. Higher skips more (faster, blurrier); 1 never skips.
    - `timestep_skip_range` (default [100, 800], `DG_PAB_TIMESTEP_SKIP`): the window of timesteps (0-1000
      scale, exclusive bounds) where skipping is allowed. Early, high-noise steps above it shape the layout
      and always compute; the last steps below it refine detail. Widen it to skip more steps.
    - `cross_skip_range` (default null: off): N for cross-attention layers (PixArt's text attention `attn2`;
      FLUX and SD3 have joint attention only, counted as spatial). Cross-attention changes least between
      steps; the PAB paper skips it most.
    - `cross_timestep_skip_range` (default [100, 800]): the window for cross-attention skipping.
    """

    name: str = "pab"
    spatial_skip_range: int = 2
    timestep_skip_range: List[int] = field(default_factory=lambda: [100, 800])
    cross_skip_range: Optional[int] = None
    cross_timestep_skip_range: List[int] = field(default_factory=lambda: [100, 800])


@register
class PyramidAttentionBroadcast(CacheOptimizer):
    name = "pab"
    families = frozenset({"flux", "sd3", "pixart"})
    refused_because = ("PAB hooks DiT attention; UNets are not wired, Sana's linear attention is untested, and "
                       "QwenImage's separate cond/uncond calls would share PAB's per-layer state")
    Settings = PabSettings
    env_variables = (EnvVariable("DG_PAB_SPATIAL_SKIP", "spatial_skip_range",
                                 "pab: spatial attention block skip range"),
                     EnvVariable("DG_PAB_TIMESTEP_SKIP", "timestep_skip_range",
                                 "pab: timestep range in which attention is skipped"))
    cache_tags = (HOOK_CACHE_TAG,)
    needs_cache_context = True
    conflicts = HOOK_CACHE_CONFLICTS
    no_skip_hint = ("Widen cache.timestep_skip_range (DG_PAB_TIMESTEP_SKIP) to cover more of this schedule's "
                    "timesteps, or raise cache.spatial_skip_range above 1.")

    def check_settings(self, family: str) -> None:
        s = self.settings
        require_at_least("spatial_skip_range", s.spatial_skip_range, 1)
        require_range("timestep_skip_range", s.timestep_skip_range)
        if s.cross_skip_range is not None:
            require_at_least("cross_skip_range", s.cross_skip_range, 1)
            require_range("cross_timestep_skip_range", s.cross_timestep_skip_range)

    def build_config(self, pipe: Any) -> Any:
        from diffusers import PyramidAttentionBroadcastConfig

        s = self.settings
        return PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=int(s.spatial_skip_range),
            spatial_attention_timestep_skip_range=require_range("timestep_skip_range", s.timestep_skip_range),
            cross_attention_block_skip_range=s.cross_skip_range,
            cross_attention_timestep_skip_range=tuple(s.cross_timestep_skip_range),
            current_timestep_callback=self.tracker.current_timestep,
        )

    def install(self, pipe: Any) -> Callable[[], None]:
        return install_hook_cache(self, self.build_config(pipe))

    def cache_evidence(self, pipe: Any) -> dict:
        return {"timestep_source": "pipeline.current_timestep" if not self.supplies_context()
                else "denoiser timestep argument"}
