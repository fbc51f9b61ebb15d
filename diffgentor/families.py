"""Pipeline families: which diffusers pipeline classes share a denoiser architecture.

Optimizer support is declared per family (optimize/compat.py), so a family is known before weights load:
read from the model's model_index.json, or from the model config entry when that file is out of reach.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    #: Attribute of the pipeline holding the denoiser ("transformer" for DiTs, "unet" for UNets).
    denoiser: str
    #: diffusers pipeline class names that belong to this family.
    pipeline_classes: tuple[str, ...]
    #: How the latent grid is cut into tokens, which multiplies the VAE's downscale in the size heights and
    #: widths must be multiples of: "packed" (2x2 latent patches, FLUX, QwenImage), "patch" (the
    #: transformer's patch_size, SD3, PixArt, Sana) or "none" (UNets).
    tokens: str = "none"
    #: The VAE downscale and the transformer patch size when the model's own configs cannot be read before
    #: load (a hub id not yet downloaded): those of the family's released models.
    vae_factor: int = 8
    patch_size: int = 1

    def size_factor(self, vae_factor: int | None = None, patch_size: int | None = None) -> int:
        """Height and width must be multiples of this (what the family's diffusers pipeline checks)."""
        factor = vae_factor or self.vae_factor
        if self.tokens == "packed":
            return factor * 2
        if self.tokens == "patch":
            return factor * (patch_size or self.patch_size)
        return factor


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("flux", "transformer", ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"), "packed"),
        Family("sd3", "transformer", ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline"), "patch",
               patch_size=2),
        Family("pixart", "transformer", ("PixArtAlphaPipeline", "PixArtSigmaPipeline"), "patch", patch_size=2),
        Family("sana", "transformer", ("SanaPipeline", "SanaSprintPipeline"), "patch", vae_factor=32),
        Family("qwenimage", "transformer", ("QwenImagePipeline",), "packed"),
        Family("sd", "unet", ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")),
        Family("sdxl", "unet", ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")),
    )
}

ALL_FAMILIES = frozenset(FAMILIES)
DIT_FAMILIES = frozenset(n for n, f in FAMILIES.items() if f.denoiser == "transformer")
UNET_FAMILIES = frozenset(n for n, f in FAMILIES.items() if f.denoiser == "unet")


def family_of_pipeline_class(class_name: str) -> str | None:
    """Map a pipeline class name (model_index.json `_class_name`) to its family, or None if unknown."""
    for family in FAMILIES.values():
        if class_name in family.pipeline_classes:
            return family.name
    return None
