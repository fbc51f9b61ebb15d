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


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("flux", "transformer", ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")),
        Family("sd3", "transformer", ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline")),
        Family("pixart", "transformer", ("PixArtAlphaPipeline", "PixArtSigmaPipeline")),
        Family("sana", "transformer", ("SanaPipeline", "SanaSprintPipeline")),
        Family("qwenimage", "transformer", ("QwenImagePipeline",)),
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
