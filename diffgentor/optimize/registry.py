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
#: - memory_layout (channels_last, layerwise casting) before fusion so fused weights inherit the layout;
#: - fuse_qkv before attention: the fused projections must exist before processors are swapped;
#: - attention before cache: cache hooks wrap blocks whose processors are already final;
#: - cache before compile: torch.compile must trace the hooked forward, not the bare one;
#: - compile before offload: offloading hooks move weights, which must not change traced modules' devices
#:   under the compiler's feet; vae options last (they touch only the decoder).
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("precision", ("tf32",)),
    ("memory_layout", ("channels_last", "layerwise_casting")),
    ("fuse_qkv", ("fuse_qkv",)),
    ("attention", ("attention",)),
    ("cache", ("deep_cache", "first_block_cache", "pab", "faster_cache", "taylor_seer", "cache_dit",
               "mag_cache")),
    ("compile", ("compile",)),
    ("offload", ("model_cpu_offload", "sequential_cpu_offload", "group_offload")),
    ("vae", ("vae_slicing", "vae_tiling")),
)
STAGE_OF: dict[str, int] = {name: i for i, (_, names) in enumerate(STAGES) for name in names}


#: Modules under diffgentor/optimize/ that register optimizers. Adding an optimizer family adds one line.
OPTIMIZER_MODULES: tuple[str, ...] = ("precision",)


def load_all() -> dict[str, type[Optimizer]]:
    """Import every optimizer module so that all `@register` decorators have run."""
    for module in OPTIMIZER_MODULES:
        importlib.import_module(f"diffgentor.optimize.{module}")
    return OPTIMIZERS
