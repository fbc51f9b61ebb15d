"""One registry of optimizers keyed by name; modules register themselves with `@register`.

Each optimizer class declares its stage, families, conflicts and settings (base.Optimizer); what is derived
from those declarations (the stage lists, compat.py's table, the conf/ schemas) is computed here or there,
never written a second time.
"""

from __future__ import annotations

import importlib

from diffgentor.families import ALL_FAMILIES
from diffgentor.optimize.base import Optimizer

OPTIMIZERS: dict[str, type[Optimizer]] = {}

#: Application order, fixed for every run, and why:
#: - precision first: TF32 flags and dtype affect everything traced or fused after them;
#: - memory_layout (channels_last) before fusion so fused weights inherit the layout;
#: - fuse_qkv before attention: the fused projections must exist before processors are swapped;
#: - storage_dtype (layerwise fp8 casting) after fusion: diffusers cannot build fused layers from fp8 weights
#:   ("check_uniform_bounds" not implemented for Float8_e4m3fn), and the fused layers must be cast too;
#: - attention before parallel: enable_parallelism checks the processors' backend, which must be final;
#: - parallel (context parallelism) before cache and compile, which would wrap the split denoiser (refused
#:   together for now);
#: - attention before cache: cache hooks wrap blocks whose processors are already final;
#: - cache before compile: torch.compile must trace the hooked forward, not the bare one;
#: - compile before offload: offloading hooks move weights, which must not change traced modules' devices
#:   under the compiler's feet; vae options last (they touch only the decoder).
STAGE_ORDER: tuple[str, ...] = ("precision", "memory_layout", "fuse_qkv", "storage_dtype", "attention", "parallel",
                                "cache", "compile", "offload", "vae")

#: The modules under diffgentor/optimize/ that declare optimizers: adding one adds its line here. They import
#: torch and diffusers only inside their methods (tests/test_startup.py holds them to it).
OPTIMIZER_MODULES: tuple[str, ...] = (
    "precision",
    "channels_last", "fuse_qkv", "layerwise_casting", "attention", "compile", "offload", "vae_memory",
    "context_parallel",
    "cache.deep_cache", "cache.first_block_cache", "cache.pab", "cache.faster_cache", "cache.taylor_seer",
    "cache.cache_dit", "cache.mag_cache",
)


def register(cls: type[Optimizer]) -> type[Optimizer]:
    """Class decorator adding an optimizer to the registry; a duplicate or an incomplete declaration is a
    programming error, raised when its module is imported."""
    if cls.name in OPTIMIZERS:
        raise ValueError(f"optimizer {cls.name!r} registered twice")
    if getattr(cls, "stage", None) not in STAGE_ORDER:
        raise ValueError(f"optimizer {cls.name!r} declares no stage of registry.STAGE_ORDER "
                         f"(stage = {getattr(cls, 'stage', None)!r})")
    if not cls.refused_because and not cls.families >= ALL_FAMILIES:
        raise ValueError(f"optimizer {cls.name!r} refuses some families without saying why (refused_because)")
    OPTIMIZERS[cls.name] = cls
    return cls


def load_all() -> dict[str, type[Optimizer]]:
    """Import every optimizer module so that all `@register` decorators have run (cheap: no torch)."""
    for module in OPTIMIZER_MODULES:
        importlib.import_module(f"diffgentor.optimize.{module}")
    return OPTIMIZERS


def stage_of(name: str) -> int:
    """Position of optimizer `name`'s stage in the application order."""
    return STAGE_ORDER.index(load_all()[name].stage)

