"""Every private name of diffusers and Hydra that diffgentor touches, and only here.

Each was checked against diffusers 0.42.1 and hydra-core 1.3.8 (the versions this project pins and tests).
A release that moves one breaks this module, in one place, instead of a cache, an attention backend or the
command line far from it. Public APIs (diffusers.hooks' apply_* functions and configs, HookRegistry's
methods, ModelMixin.set_attention_backend) are used directly where they are needed.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

DIFFUSERS_CHECKED = "0.42.1"
HYDRA_CHECKED = "1.3.8"

# ---- diffusers: a module's hook registry (diffusers/hooks/hooks.py) ----------------------------------------

#: The attribute ModelMixin / HookRegistry.check_if_exists_or_initialize keep a module's registry under.
_HOOK_REGISTRY_ATTRIBUTE = "_diffusers_hook"


def hook_registry(module: Any) -> Optional[Any]:
    """The module's diffusers HookRegistry, or None when no hook was ever registered on it."""
    return getattr(module, _HOOK_REGISTRY_ATTRIBUTE, None)


def hook_names(module: Any) -> list[str]:
    """Names of the hooks registered on `module` itself, in registration order (HookRegistry._hook_order)."""
    registry = hook_registry(module)
    return list(registry._hook_order) if registry is not None else []


def hooks_by_name(module: Any) -> dict[str, Any]:
    """The hooks registered on `module` itself, by name (HookRegistry.hooks)."""
    registry = hook_registry(module)
    return dict(getattr(registry, "hooks", {}) or {})


def set_cache_context(denoiser: Any, context: Any) -> None:
    """What CacheMixin.cache_context does on entry and exit (diffusers.hooks.hooks._set_cache_context), for
    denoisers without the mixin (SD3, PixArt)."""
    from diffusers.hooks.hooks import _set_cache_context

    _set_cache_context(denoiser, context)


def wrap_mag_cache_calibration(hook: Any, observe: Callable[[Any], None]) -> None:
    """Call `observe(state)` after each calibration step of a MagCacheBlockHook
    (MagCacheBlockHook._perform_calibration_step, which logs the ratios and then clears them)."""
    measure = hook._perform_calibration_step

    def calibrate(state: Any, residual: Any) -> None:
        measure(state, residual)
        observe(state)

    hook._perform_calibration_step = calibrate


# ---- diffusers: models and pipelines ----------------------------------------------------------------------

def repeated_block_classes(model: Any) -> tuple[str, ...]:
    """Class names of a model's repeated blocks as ModelMixin.compile_repeated_blocks finds them (the model
    class's `_repeated_blocks`); () when the class declares none."""
    return tuple(getattr(model, "_repeated_blocks", None) or ())


def execution_device(pipe: Any) -> Any:
    """The device a pipeline runs its components on, offload hooks considered (DiffusionPipeline's
    `_execution_device` property)."""
    return pipe._execution_device


def pack_flux_latents(latents: Any) -> Any:
    """FLUX's 2x2 patch packing of VAE latents (FluxPipeline._pack_latents), for the testbed's training."""
    from diffusers import FluxPipeline

    n, c, h, w = latents.shape
    return FluxPipeline._pack_latents(latents, n, c, h, w)


def flux_latent_image_ids(side: int) -> Any:
    """FLUX's positional ids of a side x side packed latent (FluxPipeline._prepare_latent_image_ids), on CPU."""
    import torch
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(1, side, side, "cpu", torch.float32)


# ---- diffusers: the attention dispatcher (diffusers/models/attention_dispatch.py) ------------------------

def attention_backend_refusal(diffusers_name: str) -> Optional[str]:
    """diffusers' own requirement check for a backend (_check_attention_backend_requirements: package
    installed, importable, recent enough), which loads no weights. None: diffusers accepts it."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _check_attention_backend_requirements

    try:
        _check_attention_backend_requirements(AttentionBackendName(diffusers_name))
    except RuntimeError as exc:
        return str(exc).splitlines()[0]
    return None


def active_attention_backend() -> Any:
    """diffusers' process-wide default backend (_AttentionBackendRegistry._active_backend)."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    return _AttentionBackendRegistry._active_backend


def set_active_attention_backend(backend: Any) -> None:
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    _AttentionBackendRegistry.set_active_backend(backend)


def attention_backend_function(diffusers_name: str) -> Callable:
    """The function diffusers dispatches `diffusers_name` to (_AttentionBackendRegistry._backends)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    return _AttentionBackendRegistry._backends[AttentionBackendName(diffusers_name)]


def set_attention_backend_function(diffusers_name: str, function: Callable) -> None:
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    _AttentionBackendRegistry._backends[AttentionBackendName(diffusers_name)] = function


def processor_backend(processor: Any) -> str:
    """The backend a dispatcher-based processor was set to by set_attention_backend (its
    `_attention_backend` slot), "" when none."""
    return str(getattr(getattr(processor, "_attention_backend", None), "value", ""))


# ---- diffusers: context parallelism (diffusers/models/modeling_utils.py, models/_modeling_parallel.py) ----

def context_parallel_backends() -> frozenset[str]:
    """Attention backends diffusers registered with context-parallel support
    (_AttentionBackendRegistry._supports_context_parallel), as diffusers names."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    return frozenset(str(getattr(name, "value", name)) for name in _AttentionBackendRegistry._supports_context_parallel)


def enable_context_parallel(model: Any, mode: str, degree: int, uneven: bool) -> None:
    """`model.enable_parallelism` with a ContextParallelConfig of `mode` ("ulysses" | "ring") over `degree`
    ranks. On a machine without an accelerator diffusers' device pick (ModelMixin._resolve_parallel_config:
    `rank % torch.accelerator.device_count()`) divides by zero; there the count reads 1 for the call, which
    picks the one device type it has (cpu) and changes nothing else (the mesh is built over gloo)."""
    import torch
    from diffusers import ContextParallelConfig

    sizes = {"ulysses_degree": degree} if mode == "ulysses" else {"ring_degree": degree}
    config = ContextParallelConfig(**sizes, **({f"{mode}_anything": True} if uneven else {}))
    device_count = torch.accelerator.device_count
    if device_count() == 0:
        torch.accelerator.device_count = lambda: 1
    try:
        model.enable_parallelism(config=config)
    finally:
        torch.accelerator.device_count = device_count


# ---- Hydra ------------------------------------------------------------------------------------------------

#: Hydra's in-process launcher (hydra/_internal/core_plugins/basic_launcher.py), as a job's
#: hydra.launcher._target_ names it: the only launcher whose jobs share one process.
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def hydra_args_parser() -> Any:
    """Hydra's own command-line parser (hydra._internal.utils.get_args_parser), to read its flags from the
    seed CLI's pass-through arguments exactly as `python -m diffgentor` would."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser()
