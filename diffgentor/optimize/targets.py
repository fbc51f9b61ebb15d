"""Which pipeline components an optimizer acts on: the denoiser by family, and user-named components.

`transformer` is the seed's default component name; on a UNet pipeline (SD, SDXL) the denoiser is `unet`,
so "transformer" means "the denoiser" there and the mapping is recorded. Any other name must be a module
the loaded pipeline has: a missing one is an error, never a skip.
"""

from __future__ import annotations

from typing import Any, Iterable

from diffgentor.errors import UnsupportedError
from diffgentor.families import FAMILIES, family_of_pipeline_class

#: The seed's name for the denoiser; it maps to `unet` on UNet pipelines.
DENOISER_ALIAS = "transformer"


def denoiser_attr(family: str) -> str:
    """The pipeline attribute holding the denoiser of `family` ("transformer" or "unet")."""
    return FAMILIES[family].denoiser


def family_of(pipe: Any) -> str:
    """The family of a loaded pipeline, from its class name."""
    family = family_of_pipeline_class(type(pipe).__name__)
    if family is None:
        raise UnsupportedError(f"{type(pipe).__name__} is not a pipeline class diffgentor knows; "
                               f"supported families: {', '.join(sorted(FAMILIES))}")
    return family


def denoiser_of(pipe: Any) -> tuple[str, Any]:
    """(attribute name, module) of the pipeline's denoiser."""
    name = denoiser_attr(family_of(pipe))
    return name, getattr(pipe, name)


def module_components(pipe: Any) -> dict[str, Any]:
    """The pipeline's components that are torch modules, by attribute name."""
    import torch

    return {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}


def map_component_name(name: str, family: str) -> str:
    """The seed's `transformer` means the denoiser; any other name is taken as given."""
    return denoiser_attr(family) if name == DENOISER_ALIAS else name


def check_component_names(field: str, names: Iterable[str], family: str) -> None:
    """Refuse before load what the family tells us already: `unet` on a DiT pipeline."""
    for name in names:
        if name == "unet" and denoiser_attr(family) != "unet":
            raise UnsupportedError(
                f"{field}: '{name}' is not a component of '{family}' pipelines, whose denoiser is "
                f"'{denoiser_attr(family)}'; use {field}=[transformer]"
            )


def resolve_components(field: str, names: Iterable[str], pipe: Any) -> dict[str, Any]:
    """Map each requested name to a module of `pipe`; a name the pipeline lacks is an error."""
    family = family_of(pipe)
    available = module_components(pipe)
    resolved: dict[str, Any] = {}
    for requested in names:
        name = map_component_name(requested, family)
        if name not in available:
            raise UnsupportedError(
                f"{field}: '{requested}' is not a module component of {type(pipe).__name__}; "
                f"it has: {', '.join(sorted(available))}"
            )
        resolved[name] = available[name]
    if not resolved:
        raise UnsupportedError(f"{field} is empty: name at least one component, e.g. {field}=[transformer]")
    return resolved


def component_mapping(names: Iterable[str], pipe: Any) -> dict[str, str]:
    """Requested name -> attribute actually used, for the record (e.g. {"transformer": "unet"})."""
    family = family_of(pipe)
    return {name: map_component_name(name, family) for name in names}
