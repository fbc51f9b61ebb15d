"""diffusers' cache hooks on any DiT denoiser, CacheMixin or not: install, reset, take off again.

Denoisers with CacheMixin (Flux, QwenImage) go through their public `enable_cache` / `disable_cache`. Others
(SD3, PixArt) get the same `apply_*` function `enable_cache` would call; removal then takes off exactly the
hooks that appeared during the install, so nothing else registered on those modules is disturbed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from diffgentor.errors import UnsupportedError
from diffgentor.internals import hook_names, hook_registry
from diffgentor.optimize.base import Conflict
from diffgentor.optimize.cache.base import CacheOptimizer

if TYPE_CHECKING:
    import torch


def _apply_functions() -> dict[type, Callable]:
    from diffusers.hooks import (
        FasterCacheConfig,
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
        apply_faster_cache,
        apply_first_block_cache,
        apply_mag_cache,
        apply_pyramid_attention_broadcast,
        apply_taylorseer_cache,
    )

    return {
        FirstBlockCacheConfig: apply_first_block_cache,
        PyramidAttentionBroadcastConfig: apply_pyramid_attention_broadcast,
        FasterCacheConfig: apply_faster_cache,
        TaylorSeerCacheConfig: apply_taylorseer_cache,
        MagCacheConfig: apply_mag_cache,
    }


def has_cache_mixin(denoiser: torch.nn.Module) -> bool:
    from diffusers.models.cache_utils import CacheMixin

    return isinstance(denoiser, CacheMixin)


def _hook_names(denoiser: torch.nn.Module) -> dict[int, tuple[torch.nn.Module, list[str]]]:
    return {id(m): (m, hook_names(m)) for m in denoiser.modules() if hook_registry(m) is not None}


def _invalidate_registry_cache(denoiser: torch.nn.Module) -> None:
    from diffusers.hooks import HookRegistry

    HookRegistry.check_if_exists_or_initialize(denoiser).invalidate_child_registries_cache()


def install(denoiser: torch.nn.Module, config: Any) -> Callable[[], None]:
    """Apply a diffusers cache `config` to `denoiser`; returns the function that removes it again."""
    if has_cache_mixin(denoiser):
        denoiser.enable_cache(config)
        return denoiser.disable_cache
    before = _hook_names(denoiser)
    _apply_functions()[type(config)](denoiser, config)
    _invalidate_registry_cache(denoiser)  # what enable_cache does: context updates must reach the new hooks
    added = []
    for key, (module, names) in _hook_names(denoiser).items():
        old = set(before.get(key, (module, []))[1])
        added += [(module, name) for name in names if name not in old]
    if not added:
        raise UnsupportedError(f"{type(config).__name__} found no module to hook in {type(denoiser).__name__}")

    def uninstall() -> None:
        for module, name in reversed(added):
            hook_registry(module).remove_hook(name, recurse=False)
        _invalidate_registry_cache(denoiser)

    return uninstall


def reset_hook_state(denoiser: torch.nn.Module) -> None:
    """Reset every stateful cache hook under `denoiser` (a new generation must not see the last one's state)."""
    from diffusers.hooks import HookRegistry

    HookRegistry.check_if_exists_or_initialize(denoiser).reset_stateful_hooks(recurse=True)


#: The tag every cache made of diffusers' hooks declares (FirstBlockCache, PAB, FasterCache, TaylorSeer,
#: MagCache), and the conflicts they share.
HOOK_CACHE_TAG = "cache:diffusers_hooks"
HOOK_CACHE_CONFLICTS = (
    # Measured on shapes-flux (diffusers 0.42, torch 2.13): FirstBlockCache, TaylorSeer and MagCache run
    # their block logic in torch.compiler.disable()d functions, PAB and FasterCache branch on tensor
    # values; with fullgraph=True dynamo raises on the first of these, after the weights loaded.
    Conflict("compile:fullgraph", HOOK_CACHE_TAG, "error",
             "diffusers' cache hooks run compiler-disabled code or branch on tensor values, which "
             "fullgraph=true refuses; use compile.fullgraph=false (the default) with this cache"),
)


def install_hook_cache(cache: CacheOptimizer, config: Any) -> Callable[[], None]:
    """Install a diffusers cache `config` on `cache.denoiser` (kept as `cache.config`), its hook state reset
    at each new generation and SD3's last block made to return tensors only (joint_blocks.py); returns
    the function that takes it all off again."""
    from diffgentor.optimize.cache.joint_blocks import keep_text_stream_of_pre_only_blocks

    cache.config = config
    restore_blocks = keep_text_stream_of_pre_only_blocks(cache.denoiser)
    try:
        uninstall = install(cache.denoiser, config)
    except BaseException:
        restore_blocks()
        raise
    cache.tracker.on_generation(lambda tracker: reset_hook_state(cache.denoiser))

    def remove() -> None:
        uninstall()
        restore_blocks()

    return remove
