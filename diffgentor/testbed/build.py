"""Turn a Recipe into a live diffusers pipeline with seeded, frozen weights (no files, no hub)."""

from __future__ import annotations

import diffusers
import torch
import transformers

from diffgentor.testbed.recipes import Component, Recipe
from diffgentor.testbed.tokenizers import TOKENIZER_BUILDERS


def _frozen(module: torch.nn.Module) -> torch.nn.Module:
    """Built modules start in train mode; T5 dropout would then make every run differ."""
    return module.eval().requires_grad_(False)


def build_component(component: Component):
    """One component. Models are created right after torch.manual_seed(seed), so weights are reproducible."""
    if component.cls is None:
        return None
    if component.cls in TOKENIZER_BUILDERS:
        return TOKENIZER_BUILDERS[component.cls](**component.config)
    if hasattr(transformers, component.cls):
        model_cls = getattr(transformers, component.cls)
        config = model_cls.config_class(**component.config)
        torch.manual_seed(component.seed)
        return _frozen(model_cls(config))
    cls = getattr(diffusers, component.cls)
    if issubclass(cls, diffusers.SchedulerMixin):
        return cls(**component.config)
    torch.manual_seed(component.seed)
    return _frozen(cls(**component.config))


def build_recipe(recipe: Recipe) -> diffusers.DiffusionPipeline:
    """The whole pipeline, in float32 on CPU. The global torch RNG state is restored afterwards."""
    pipeline_cls = getattr(diffusers, recipe.pipeline)
    rng_state = torch.get_rng_state()
    try:
        components = {name: build_component(part) for name, part in recipe.components.items()}
    finally:
        torch.set_rng_state(rng_state)
    return pipeline_cls(**components, **recipe.pipeline_kwargs)
