"""One registry of optimizers keyed by name; modules register themselves with `@register`."""

from __future__ import annotations

import importlib

from diffgentor.optimize.base import Optimizer

OPTIMIZERS: dict[str, type[Optimizer]] = {}


def register(cls: type[Optimizer]) -> type[Optimizer]:
    """Class decorator adding an optimizer to the registry; a duplicate name is a programming error."""
    if cls.name in OPTIMIZERS:
        raise ValueError(f"optimizer {cls.name!r} registered twice")
    if cls.name not in STAGE_OF:
        raise ValueError(f"optimizer {cls.name!r} has no stage in optimize/registry.py STAGES")
    OPTIMIZERS[cls.name] = cls
    return cls


#: Application order, fixed for every run, and why:
#: - precision first: TF32 flags and dtype affect everything traced or fused after them;
#: - memory_layout (channels_last) before fusion so fused weights inherit the layout;
#: - fuse_qkv before attention: the fused projections must exist before processors are swapped;
#: - storage_dtype (layerwise fp8 casting) after fusion: diffusers cannot build fused layers from fp8 weights
#:   ("check_uniform_bounds" not implemented for Float8_e4m3fn), and the fused layers must be cast too;
#: - attention before cache: cache hooks wrap blocks whose processors are already final;
#: - cache before compile: torch.compile must trace the hooked forward, not the bare one;
#: - compile before offload: offloading hooks move weights, which must not change traced modules' devices
#:   under the compiler's feet; vae options last (they touch only the decoder).
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("precision", ("tf32",)),
    ("memory_layout", ("channels_last",)),
    ("fuse_qkv", ("fuse_qkv",)),
    ("storage_dtype", ("layerwise_casting",)),
    ("attention", ("attention",)),
    ("cache", ("deep_cache", "first_block_cache", "pab", "faster_cache", "taylor_seer", "cache_dit",
               "mag_cache")),
    ("compile", ("compile",)),
    ("offload", ("model_cpu_offload", "sequential_cpu_offload", "group_offload")),
    ("vae", ("vae_slicing", "vae_tiling")),
)
STAGE_OF: dict[str, int] = {name: i for i, (_, names) in enumerate(STAGES) for name in names}


#: Modules under diffgentor/optimize/ that register optimizers. Adding an optimizer family adds one line.
OPTIMIZER_MODULES: tuple[str, ...] = (
    "precision",
    "channels_last", "fuse_qkv", "layerwise_casting", "attention", "compile", "offload", "vae_memory",
    "cache.deep_cache", "cache.first_block_cache", "cache.pab", "cache.faster_cache", "cache.taylor_seer",
    "cache.cache_dit", "cache.mag_cache",
)


def load_all() -> dict[str, type[Optimizer]]:
    """Import every optimizer module so that all `@register` decorators have run."""
    for module in OPTIMIZER_MODULES:
        importlib.import_module(f"diffgentor.optimize.{module}")
    return OPTIMIZERS
