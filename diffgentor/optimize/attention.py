"""Attention backends (`+attention=<option>`): the kernel the denoiser's attention runs on, proven by counting.

diffusers picks the kernel in `attention_dispatch.dispatch_attention_fn`, but only processors that call it
honour `set_attention_backend`; on SD/SDXL/PixArt/SD3 the processors are first switched to dispatcher-based
twins (attention_processors.py), so the setting never silently does nothing. The evidence counts the calls
that reached the chosen backend's function during the evidence pass (the counter sits in diffusers' backend
registry only then, never in the timed calls); zero is an error.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Callable, Optional

from diffgentor.errors import ConfigError, MissingPackageError, UnsupportedError
from diffgentor.families import ALL_FAMILIES
from diffgentor.optimize.base import Conflict, Optimizer
from diffgentor.optimize.registry import register
from diffgentor.optimize.targets import denoiser_of


@dataclass
class AttentionSettings:
    """Which attention kernel the denoiser runs. The option name is the whole choice:

    - `native`: PyTorch SDPA, which picks its fastest kernel itself. Exact; the safe default.
    - `flash`: FlashAttention-2 (flash-attn, CUDA, fp16/bf16, no attention masks). Faster, exact up to fp16.
    - `flash_3`: FlashAttention-3 (diffusers' `_flash_3`; Hopper GPUs, built from source). Fastest on H100/H200.
    - `sage`: SageAttention (INT8 QK, FP8/FP16 PV; CUDA). Faster still, approximate: check quality.
    - `xformers`: xFormers memory-efficient attention (CUDA). Takes masks; lower memory.
    - `_native_math`: SDPA's reference math kernel. Slowest, for checking others.
    - `_native_flash`: SDPA's flash kernel only (fails instead of falling back; no masks).
    - `flex`: FlexAttention. Slow in eager mode; meant to be combined with +compile.
    """

    name: str = "native"


@dataclass(frozen=True)
class Backend:
    """What one option needs, as data: checked before load."""

    diffusers_name: str
    #: Importable module the kernel comes from, checked with find_spec (never imported here).
    module: Optional[str] = None
    #: pip extra of diffgentor that installs it, or None when no extra can (FlashAttention-3).
    extra: Optional[str] = None
    needs_cuda: bool = False
    #: On CUDA the kernel only takes fp16/bf16 inputs.
    cuda_half_only: bool = False
    #: False: the kernel raises on an attention mask.
    takes_mask: bool = True


BACKENDS: dict[str, Backend] = {
    "native": Backend("native"),
    "flash": Backend("flash", "flash_attn", "flash", needs_cuda=True, cuda_half_only=True, takes_mask=False),
    "flash_3": Backend("_flash_3", "flash_attn_interface", None, needs_cuda=True, cuda_half_only=True,
                       takes_mask=False),
    "sage": Backend("sage", "sageattention", "sage", needs_cuda=True, cuda_half_only=True, takes_mask=False),
    "xformers": Backend("xformers", "xformers", "xformers", needs_cuda=True),
    "_native_math": Backend("_native_math"),
    "_native_flash": Backend("_native_flash", cuda_half_only=True, takes_mask=False),
    "flex": Backend("flex"),
}

#: Families whose denoiser always passes an attention mask (PixArt: the T5 padding mask on cross-attention).
#: QwenImage passes one only when a batch's prompts have different lengths; mask-free kernels then raise.
MASKED_FAMILIES = frozenset({"pixart"})
CPU_OPTIONS = tuple(name for name, b in BACKENDS.items() if not b.needs_cuda)


def diffusers_refusal(diffusers_name: str) -> Optional[str]:
    """What diffusers would refuse after the weights load (package missing, failing to import, too old), asked
    at plan time with its own check (internals.attention_backend_refusal). None: diffusers accepts it."""
    from diffgentor.internals import attention_backend_refusal

    return attention_backend_refusal(diffusers_name)


def _missing_package(option: str, backend: Backend) -> UnsupportedError:
    what = f"attention={option}"
    if backend.extra:
        return MissingPackageError(what, backend.module or "", backend.extra)
    return UnsupportedError(
        f"{what} needs FlashAttention-3 (module '{backend.module}'), which is not installed and not on PyPI: "
        "build it from github.com/Dao-AILab/flash-attention (hopper/), or use +attention=flash "
        "(pip install 'diffgentor[flash]')"
    )


class _CountingBackend:
    """Stands in for one backend function in diffusers' registry and counts the calls that reach it.

    `dispatch_attention_fn` looks the function up at every call, so every attention computed with this backend
    passes here. Installed for the evidence pass only, which runs compiled modules eager.
    """

    def __init__(self, fn: Callable):
        self.fn = fn
        self.calls = 0

    def __call__(self, **kwargs: Any) -> Any:
        self.calls += 1
        return self.fn(**kwargs)


@register
class AttentionBackend(Optimizer):
    name = "attention"
    stage = "attention"
    config_group = "attention"
    Settings = AttentionSettings
    families = ALL_FAMILIES - {"sana"}
    refused_because = ("Sana's linear-attention processors bypass diffusers' attention dispatcher and diffgentor "
                       "has no dispatcher twin for them")
    conflicts = (Conflict("attention:flash", "attention:xformers", "error",
                          "two attention kernels for the same layers; pick one +attention option"),)

    @classmethod
    def select(cls, run_cfg: Any) -> Any:
        return cls.active_group(run_cfg)

    @property
    def option(self) -> str:
        return self.settings.name

    @property
    def backend(self) -> Backend:
        if self.option not in BACKENDS:
            raise ConfigError(f"attention={self.option} is unknown; use one of: {', '.join(BACKENDS)}")
        return BACKENDS[self.option]

    def params(self) -> dict:
        known = BACKENDS.get(self.option)  # an unknown option is refused by check(); the plan still shows it
        return {"backend": known.diffusers_name if known else self.option}

    def tags(self) -> set[str]:
        return {self.name, f"attention:{self.option}"}

    def check(self, family: str) -> None:
        import torch

        backend, option = self.backend, self.option
        if backend.module and importlib.util.find_spec(backend.module) is None:
            raise _missing_package(option, backend)
        refusal = diffusers_refusal(backend.diffusers_name)
        if refusal:
            hint = f" (pip install 'diffgentor[{backend.extra}]')" if backend.extra else ""
            raise UnsupportedError(f"attention={option}: diffusers will not run it here: {refusal}{hint}")
        if backend.needs_cuda and not self.device.startswith("cuda"):
            raise UnsupportedError(
                f"attention={option} runs on CUDA GPUs only and this run is on {self.device}; "
                f"on CPU use +attention= one of {', '.join(CPU_OPTIONS)}"
            )
        if backend.cuda_half_only and self.device.startswith("cuda") and self.dtype == torch.float32:
            raise UnsupportedError(
                f"attention={option} takes only fp16/bf16 tensors on CUDA and this run loads fp32 weights; "
                "use precision=bf16 (or precision=fp16)"
            )
        if not backend.takes_mask and family in MASKED_FAMILIES:
            raise UnsupportedError(
                f"attention={option} cannot take attention masks and '{family}' pipelines always pass one "
                "(text padding mask); use +attention=native, xformers or flex"
            )

    def apply(self, pipe: Any) -> None:
        from diffgentor.internals import active_attention_backend, set_active_attention_backend
        from diffgentor.optimize.attention_processors import attention_modules, route_through_dispatcher

        self._component, model = denoiser_of(pipe)
        self._original_processors = dict(model.attn_processors)
        self._replaced = route_through_dispatcher(model)
        previous_active = active_attention_backend()
        model.set_attention_backend(self.backend.diffusers_name)
        # set_attention_backend also makes it diffusers' process-wide default, which any other Flux-like model
        # (the next sweep job's baseline) would then silently follow; the processors hold it explicitly.
        set_active_attention_backend(previous_active)
        self._modules = len(attention_modules(model))
        self._counter: Optional[_CountingBackend] = None

    def instrument(self, pipe: Any) -> None:
        """For the evidence pass: count, in diffusers' backend registry, the calls that reach the backend."""
        from diffgentor.internals import attention_backend_function, set_attention_backend_function

        name = self.backend.diffusers_name
        self._counter = _CountingBackend(attention_backend_function(name))
        set_attention_backend_function(name, self._counter)

    def uninstrument(self, pipe: Any) -> None:
        self.release()

    def evidence(self, pipe: Any) -> dict:
        from diffgentor.internals import processor_backend
        from diffgentor.optimize.attention_processors import attention_modules

        if self._counter is None:
            raise UnsupportedError("attention: no evidence pass ran, so no attention call was counted")
        _, model = denoiser_of(pipe)
        evidence = {
            "backend": self.backend.diffusers_name,
            "component": self._component,
            "attention_modules": self._modules,
            "modules_set_to_backend": sum(
                1 for m in attention_modules(model).values()
                if processor_backend(m.processor) == self.backend.diffusers_name),
            "processors_rerouted": self._replaced,
            "dispatcher_calls": self._counter.calls,
            "measured_in": "evidence pass",
        }
        if self._counter.calls > 0:
            return evidence
        raise UnsupportedError(
            f"attention={self.option}: no attention call reached the '{self.backend.diffusers_name}' backend "
            f"during the evidence pass, so the setting had no effect on {self._component}"
        )

    def release(self) -> None:
        """Put the backend's own function back in diffusers' registry (the counting window ends); what was
        counted stays readable."""
        from diffgentor.internals import attention_backend_function, set_attention_backend_function

        counter = getattr(self, "_counter", None)
        name = self.backend.diffusers_name
        if counter is not None and attention_backend_function(name) is counter:
            set_attention_backend_function(name, counter.fn)

    def remove(self, pipe: Any) -> None:
        self.release()
        _, model = denoiser_of(pipe)
        model.reset_attention_backend()
        if self._replaced:
            model.set_attn_processor(dict(self._original_processors))
