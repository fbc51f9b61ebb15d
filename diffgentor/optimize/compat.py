"""The compatibility matrix, as data: which optimizer serves which pipeline family, and which pairs conflict.

Checked at plan time, before any weights load, and printed by the dry run and `diffgentor support`.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffgentor.families import ALL_FAMILIES


@dataclass(frozen=True)
class Support:
    families: frozenset[str]
    #: Why the other families are refused; shown in the error next to the families that do fit.
    reason: str = ""


#: optimizer name -> the families it is known to take effect on.
FAMILY_SUPPORT: dict[str, Support] = {
    "tf32": Support(ALL_FAMILIES),
    # optimizer applier (issue 3): attention, fused QKV, compile, memory
    "attention": Support(ALL_FAMILIES - {"sana"}, "Sana's linear-attention processors bypass diffusers' "
                         "attention dispatcher and diffgentor has no dispatcher twin for them"),
    "fuse_qkv": Support(ALL_FAMILIES - {"sana", "qwenimage"}, "diffusers' fuse_qkv_projections() creates no "
                        "fused layer there (measured: a silent no-op)"),
    "compile": Support(ALL_FAMILIES),
    "channels_last": Support(ALL_FAMILIES),
    "layerwise_casting": Support(ALL_FAMILIES),
    "model_cpu_offload": Support(ALL_FAMILIES),
    "sequential_cpu_offload": Support(ALL_FAMILIES),
    "group_offload": Support(ALL_FAMILIES),
    "vae_slicing": Support(ALL_FAMILIES),
    "vae_tiling": Support(ALL_FAMILIES),
    # cache acceleration (issue 4). SD3/PixArt: diffgentor supplies the cache context and timestep their
    # pipelines lack (optimize/cache/context.py). qwenimage: wired by diffusers / cache-dit themselves; measured on
    # tiny-qwenimage (tests/test_caches.py). cache-dit pairs QwenImage's calls as cond/uncond: right only with a
    # negative prompt, else set cache.enable_separate_cfg=false (its evidence warns).
    "deep_cache": Support(frozenset({"sd", "sdxl"}), "DeepCache caches the skip branches of a UNet; DiT "
                          "pipelines have none"),
    "first_block_cache": Support(frozenset({"flux", "sd3", "pixart", "qwenimage"}), "diffusers' block hooks need "
                                 "DiT blocks its registry knows: UNets have none (IndexError), Sana's are not "
                                 "registered"),
    "pab": Support(frozenset({"flux", "sd3", "pixart"}), "PAB hooks DiT attention; UNets are not wired, Sana's "
                   "linear attention is untested, and QwenImage's separate cond/uncond calls would share PAB's "
                   "per-layer state"),
    "faster_cache": Support(frozenset({"flux", "sd3", "pixart"}), "FasterCache hooks DiT attention; UNets are not "
                            "wired, Sana is untested, and QwenImage's separate cond/uncond calls would share its "
                            "per-layer state"),
    "taylor_seer": Support(frozenset({"flux", "sd3", "pixart", "qwenimage"}), "TaylorSeer hooks DiT blocks and "
                           "attention by name; UNets and Sana are not wired"),
    "mag_cache": Support(frozenset({"flux", "sd3", "pixart", "qwenimage"}), "MagCache hooks DiT blocks its "
                         "registry knows: UNets have none, Sana's are not registered"),
    "cache_dit": Support(frozenset({"flux", "sd3", "pixart", "qwenimage", "sana"}), "cache-dit adapts the DiT "
                         "pipelines it recognises by class name and refuses UNet pipelines"),
}


@dataclass(frozen=True)
class Conflict:
    """Two optimizer tags that cannot be combined ("error") or only with care ("warn")."""

    first: str
    second: str
    severity: str  # "error" | "warn"
    reason: str


#: Pairs from the seed's compatibility matrix (plus what diffusers taught us). Tags come from
#: Optimizer.tags(): an optimizer's name, plus e.g. "attention:flash" for a specific backend.
CONFLICTS: tuple[Conflict, ...] = (
    # the seed's matrix
    Conflict("attention:flash", "attention:xformers", "error",
             "two attention kernels for the same layers; pick one +attention option"),
    Conflict("compile", "xdit", "error", "xDiT's parallel runtime is not traceable by torch.compile; drop +compile"),
    # CUDA graphs replay into the same static buffers on every call; a cache keeps tensors from one denoiser
    # call for the next (residuals, features, Taylor factors), which the next replay overwrites. Until a GPU
    # test shows a cache intact under graphs, the pair is refused (on CPU these modes capture no graphs, but
    # a dry run here must refuse what the GPU would get wrong).
    Conflict("cache", "compile:cuda_graphs", "error",
             "a cache keeps tensors across denoiser calls and CUDA graphs overwrite them at each replay; use "
             "compile.mode=max-autotune-no-cudagraphs (or default) with a cache"),
    Conflict("compile:regional", "compile:cuda_graphs", "error",
             "regional compile shares one compiled block between blocks of different weights, which CUDA "
             "graphs would record once per block (untested on a GPU here); use "
             "compile.mode=max-autotune-no-cudagraphs (or default) with compile.regional=true"),
    Conflict("cache", "xdit", "warn", "cache hooks under xDiT parallelism are untested per model: check outputs"),
)


def families_supporting(name: str) -> frozenset[str]:
    """The families `name` serves; an optimizer missing from the table serves none (never silently all)."""
    support = FAMILY_SUPPORT.get(name)
    return support.families if support else frozenset()
