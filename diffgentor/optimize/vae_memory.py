"""VAE decode memory options (`+memory=vae_slicing`, `+memory=vae_tiling`), on `pipe.vae` (diffusers 0.42 removed
the pipeline-level switches).

Both only change anything when the decode is split: slicing when a batch holds more than one image, tiling
when the latents exceed the VAE's tile size. The evidence counts top-level decodes and decoder passes in the
evidence pass (the counter is attached for it only); equal counts mean nothing was split, which the run records
as a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from diffgentor.errors import UnsupportedError
from diffgentor.optimize.base import Optimizer
from diffgentor.optimize.registry import register


@dataclass
class VaeSlicingSettings:
    """Decode a batch one image at a time: the decoder's peak activation memory drops to one image's, at a
    small cost in speed. Changes nothing at batch_size=1."""

    name: str = "vae_slicing"


@dataclass
class VaeTilingSettings:
    """Decode in overlapping tiles: memory stays that of one tile whatever the image size; tiles are blended
    over their overlap, which can leave faint seams. Engages only when the latents exceed the tile size.

    - `tile_sample_min_size_px`: tile edge in pixels; null keeps the VAE's own (its config sample_size, e.g.
      512 for SD 1.5, 1024 for FLUX). Smaller: less memory, more tiles and seams.
    - `tile_overlap_factor`: fraction of a tile blended with its neighbour; null keeps the VAE's (0.25).
      Larger: smoother seams, more tiles.
    """

    name: str = "vae_tiling"
    tile_sample_min_size_px: Optional[int] = None
    tile_overlap_factor: Optional[float] = None


class DecodeCounter:
    """Counts `vae.decode` calls and decoder passes (one per slice or tile) while installed."""

    def __init__(self, vae: Any):
        self.vae = vae
        self.decode_calls = self.decoder_passes = 0
        original_decode = vae.decode

        def decode(*args: Any, **kwargs: Any) -> Any:
            self.decode_calls += 1
            return original_decode(*args, **kwargs)

        vae.decode = decode
        self._handle = vae.decoder.register_forward_hook(self._count_pass)

    def _count_pass(self, *_: Any) -> None:
        self.decoder_passes += 1

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
            del self.vae.decode  # the instance attribute; the class method shows through again


class _VaeOption(Optimizer):
    stage = "vae"
    config_group = "memory"
    #: The AutoencoderMixin switch this option turns on, and what a split is called in the evidence.
    switch: str
    unit: str

    def apply(self, pipe: Any) -> None:
        vae = getattr(pipe, "vae", None)
        if vae is None or not hasattr(vae, f"enable_{self.switch}"):
            raise UnsupportedError(f"{self.name}: {type(pipe).__name__} has no VAE with enable_{self.switch}()")
        self.configure(vae)
        getattr(vae, f"enable_{self.switch}")()
        self._vae = vae
        self._counter: Optional[DecodeCounter] = None

    def instrument(self, pipe: Any) -> None:
        """For the evidence pass: count decodes and decoder passes."""
        self._counter = DecodeCounter(self._vae)

    def uninstrument(self, pipe: Any) -> None:
        if self._counter is not None:
            self._counter.remove()

    def configure(self, vae: Any) -> None:
        """Option-specific settings on the VAE, before the switch is turned on."""

    def evidence(self, pipe: Any) -> dict:
        c = self._counter
        if c is None:
            raise UnsupportedError(f"{self.name}: no evidence pass ran, so no decode was counted")
        evidence = {f"use_{self.switch}": bool(getattr(pipe.vae, f"use_{self.switch}")),
                    "decode_calls": c.decode_calls, "decoder_passes": c.decoder_passes,
                    "measured_in": "evidence pass"}
        if c.decoder_passes <= c.decode_calls:
            evidence["warnings"] = [f"no decode was split into {self.unit} in this run ({self.idle_reason()}): "
                                    f"{self.name} saved no memory"]
        return evidence

    def idle_reason(self) -> str:
        raise NotImplementedError

    def remove(self, pipe: Any) -> None:
        self.uninstrument(pipe)
        getattr(pipe.vae, f"disable_{self.switch}")()


@register
class VaeSlicing(_VaeOption):
    name = "vae_slicing"
    Settings = VaeSlicingSettings
    switch, unit = "slicing", "slices"

    def idle_reason(self) -> str:
        return "every decoded batch held one image; raise batch_size"


@register
class VaeTiling(_VaeOption):
    name = "vae_tiling"
    Settings = VaeTilingSettings
    switch, unit = "tiling", "tiles"

    SIZES = ("tile_sample_min_size", "tile_latent_min_size", "tile_overlap_factor")

    def configure(self, vae: Any) -> None:
        s = self.settings
        self._original_sizes = {k: getattr(vae, k) for k in self.SIZES if hasattr(vae, k)}
        if s.tile_sample_min_size_px is not None:
            if not hasattr(vae, "tile_latent_min_size"):
                raise UnsupportedError(f"memory.tile_sample_min_size_px: {type(vae).__name__} has no single tile "
                                       "size to set; leave it null")
            factor = 2 ** (len(vae.config.block_out_channels) - 1)
            vae.tile_sample_min_size = s.tile_sample_min_size_px
            vae.tile_latent_min_size = s.tile_sample_min_size_px // factor
        if s.tile_overlap_factor is not None:
            vae.tile_overlap_factor = s.tile_overlap_factor

    def evidence(self, pipe: Any) -> dict:
        evidence = super().evidence(pipe)
        evidence["tile_sample_min_size_px"] = self.tile_px(pipe.vae)
        return evidence

    def remove(self, pipe: Any) -> None:
        super().remove(pipe)
        for key, value in self._original_sizes.items():
            setattr(pipe.vae, key, value)

    @staticmethod
    def tile_px(vae: Any) -> Optional[int]:
        """The tile edge: AutoencoderKL's tile_sample_min_size, else the height of the video-style VAEs
        (QwenImage's: 256 px) that tile height and width separately."""
        return getattr(vae, "tile_sample_min_size", getattr(vae, "tile_sample_min_height", None))

    def idle_reason(self) -> str:
        size = self.tile_px(self._vae) or "?"
        return f"images were not larger than the {size} px tile; lower memory.tile_sample_min_size_px"
