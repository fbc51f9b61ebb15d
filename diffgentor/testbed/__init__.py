"""Tiny, offline, seeded diffusers pipelines that stand in for real checkpoints.

`materialize(name, cache_root)` returns a folder that loads with the ordinary
`DiffusionPipeline.from_pretrained(folder, use_safetensors=True)`, the same path a hub id takes, so
every optimization is exercised exactly as on a real model, in well under a second per generation.
Call a testbed with TESTBED_DEFAULTS[name] plus TESTBED_CALL_KWARGS[name] (PixArt needs
use_resolution_binning=False at 64 px); Flux must be given height/width (its pipeline defaults to 1024 px).
"""

from diffgentor.testbed.build import build_recipe
from diffgentor.testbed.recipes import (
    RECIPES,
    TESTBED_CALL_KWARGS,
    TESTBED_DEFAULTS,
    TESTBED_SIZE_MULTIPLE_PX,
)
from diffgentor.testbed.store import materialize, recipe_for

TESTBED_NAMES: tuple[str, ...] = tuple(RECIPES)


def build_pipeline(name: str):
    """The testbed pipeline in memory, never saved: the reference `materialize` output must match."""
    return build_recipe(recipe_for(name))


__all__ = [
    "TESTBED_NAMES",
    "TESTBED_DEFAULTS",
    "TESTBED_CALL_KWARGS",
    "TESTBED_SIZE_MULTIPLE_PX",
    "materialize",
    "build_pipeline",
]
