"""FasterCache (diffusers' FasterCacheConfig) on DiT pipelines: FLUX (guidance-distilled), SD3 and PixArt (CFG).

Two savings: attention outputs are extrapolated from the last two computed steps instead of recomputed, and
on CFG pipelines the unconditional half of the batch is skipped on most steps and approximated from the
conditional half (low/high frequency deltas). FLUX.1 embeds guidance and runs one conditional batch, so only
the first applies there (`guidance_distilled`). Settings left null take the family's default below, which
follow diffusers' own tests for FLUX and the FasterCache paper's values for CFG models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, List, Optional

from diffgentor.errors import UnsupportedError
from diffgentor.optimize.cache.base import CacheOptimizer, require_at_least, require_range
from diffgentor.optimize.cache.diffusers_hooks import HOOK_CACHE_CONFLICTS, HOOK_CACHE_TAG, install_hook_cache
from diffgentor.optimize.registry import register

if TYPE_CHECKING:
    import torch

#: Per-family defaults for the settings left null.
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "flux": {"guidance_distilled": True, "spatial_timestep_skip_range": [-1, 901],
             "unconditional_batch_skip_range": 2},
    "sd3": {"guidance_distilled": False, "spatial_timestep_skip_range": [-1, 681],
            "unconditional_batch_skip_range": 5},
    "pixart": {"guidance_distilled": False, "spatial_timestep_skip_range": [-1, 681],
               "unconditional_batch_skip_range": 5},
}
#: Denoiser keyword arguments that carry the [uncond, cond] CFG batch, which FasterCache halves. diffusers'
#: list lacks SD3's pooled text embedding: left whole, it would broadcast the half batch back to two.
CFG_BATCH_INPUTS: dict[str, tuple[str, ...]] = {
    "sd3": ("hidden_states", "encoder_hidden_states", "timestep", "pooled_projections"),
    "pixart": ("hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask"),
}


@dataclass
class FasterCacheSettings:
    """FasterCache: reuse attention across steps and, with classifier-free guidance, skip the unconditional
    branch on most steps. Null fields take the pipeline family's default (FAMILY_DEFAULTS).

    - `spatial_skip_range` (default 2): attention is recomputed every N-th step inside its window and
      extrapolated from the last two computed outputs in between. Higher is faster and less faithful.
    - `spatial_timestep_skip_range` (null: FLUX [-1, 901], SD3/PixArt [-1, 681]): the window of timesteps
      (0-1000 scale, exclusive) where attention may be extrapolated; early high-noise steps above it compute.
    - `attention_weight` (default 0.5): weight of the extrapolation `out_t + (out_t - out_t-2) * w`; 0 reuses
      the last output as is.
    - `unconditional_batch_skip_range` (null: FLUX 2, SD3/PixArt 5): the unconditional branch is computed every
      N-th step inside its window and approximated in between. Higher skips more. Unused when guidance-distilled.
    - `unconditional_batch_timestep_skip_range` (default [-1, 641]): the window where it may be skipped.
    - `alpha_low_frequency` / `alpha_high_frequency` (default 1.1): scaling of the low / high frequency
      difference between the branches while approximating the unconditional one (paper's Eq. 11), applied
      in `low_frequency_weight_update_timestep_range` (default [99, 901]) /
      `high_frequency_weight_update_timestep_range` (default [-1, 301]).
    - `guidance_distilled` (null: true for FLUX, false for SD3/PixArt): true when the pipeline runs one
      conditional batch (guidance embedded, or guidance_scale <= 1); false needs the CFG batch
      (guidance_scale > 1), checked at each call.
    """

    name: str = "faster_cache"
    spatial_skip_range: int = 2
    spatial_timestep_skip_range: Optional[List[int]] = None
    attention_weight: float = 0.5
    unconditional_batch_skip_range: Optional[int] = None
    unconditional_batch_timestep_skip_range: List[int] = field(default_factory=lambda: [-1, 641])
    alpha_low_frequency: float = 1.1
    alpha_high_frequency: float = 1.1
    low_frequency_weight_update_timestep_range: List[int] = field(default_factory=lambda: [99, 901])
    high_frequency_weight_update_timestep_range: List[int] = field(default_factory=lambda: [-1, 301])
    guidance_distilled: Optional[bool] = None


@register
class FasterCache(CacheOptimizer):
    name = "faster_cache"
    families = frozenset({"flux", "sd3", "pixart"})
    refused_because = ("FasterCache hooks DiT attention; UNets are not wired, Sana is untested, and QwenImage's "
                       "separate cond/uncond calls would share its per-layer state")
    Settings = FasterCacheSettings
    cache_tags = (HOOK_CACHE_TAG,)
    needs_cache_context = True
    conflicts = HOOK_CACHE_CONFLICTS
    no_skip_hint = ("Widen cache.spatial_timestep_skip_range / cache.unconditional_batch_timestep_skip_range to "
                    "cover more of this schedule's timesteps.")

    def resolved(self, family: str) -> dict[str, Any]:
        """The settings with every null replaced by the family's default."""
        values = {k: v for k, v in vars(self.settings).items() if k != "name"}
        for key, default in FAMILY_DEFAULTS.get(family, FAMILY_DEFAULTS["sd3"]).items():
            if values.get(key) is None:
                values[key] = default
        return values

    def check_settings(self, family: str) -> None:
        values = self.resolved(family)
        require_at_least("spatial_skip_range", values["spatial_skip_range"], 1)
        require_at_least("unconditional_batch_skip_range", values["unconditional_batch_skip_range"], 1)
        for key in ("spatial_timestep_skip_range", "unconditional_batch_timestep_skip_range",
                    "low_frequency_weight_update_timestep_range", "high_frequency_weight_update_timestep_range"):
            require_range(key, values[key])

    def build_config(self, pipe: Any) -> Any:
        from diffusers import FasterCacheConfig

        values = self._values = self.resolved(self.family)
        weight = float(values["attention_weight"])
        kwargs = {}
        if self.family in CFG_BATCH_INPUTS:
            kwargs["_unconditional_conditional_input_kwargs_identifiers"] = list(CFG_BATCH_INPUTS[self.family])
        return FasterCacheConfig(
            spatial_attention_block_skip_range=int(values["spatial_skip_range"]),
            spatial_attention_timestep_skip_range=tuple(values["spatial_timestep_skip_range"]),
            attention_weight_callback=lambda _: weight,
            unconditional_batch_skip_range=int(values["unconditional_batch_skip_range"]),
            unconditional_batch_timestep_skip_range=tuple(values["unconditional_batch_timestep_skip_range"]),
            alpha_low_frequency=float(values["alpha_low_frequency"]),
            alpha_high_frequency=float(values["alpha_high_frequency"]),
            low_frequency_weight_update_timestep_range=tuple(values["low_frequency_weight_update_timestep_range"]),
            high_frequency_weight_update_timestep_range=tuple(
                values["high_frequency_weight_update_timestep_range"]),
            tensor_format="BCHW",
            is_guidance_distilled=bool(values["guidance_distilled"]),
            current_timestep_callback=self.tracker.current_timestep,
            **kwargs,
        )

    def install(self, pipe: Any) -> Callable[[], None]:
        remove_hooks = install_hook_cache(self, self.build_config(pipe))
        if self._values["guidance_distilled"]:
            return remove_hooks
        import torch

        # a Python check on shapes and pipeline state, kept out of any compiled graph
        guard = self.denoiser.register_forward_pre_hook(torch.compiler.disable(self._require_cfg_batch),
                                                        with_kwargs=True)

        def remove() -> None:
            guard.remove()
            remove_hooks()

        return remove

    def _require_cfg_batch(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """FasterCache splits the batch into [uncond, cond] halves; without CFG that silently mixes images."""
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        cfg = getattr(self.tracker.pipe, "do_classifier_free_guidance", None)
        if cfg is False or (hidden is not None and hidden.shape[0] % 2):
            raise UnsupportedError(
                f"faster_cache on '{self.family}' expects the classifier-free-guidance batch [uncond, cond], but "
                "this call has none (guidance_scale <= 1): set guidance_scale > 1, or cache.guidance_distilled=true")

    def cache_evidence(self, pipe: Any) -> dict:
        return {"resolved": self._values}
