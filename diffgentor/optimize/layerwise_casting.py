"""Layerwise casting (`+memory=layerwise_casting`): weights stored in fp8, each layer upcast to the run's dtype
only for its own forward (diffusers `enable_layerwise_casting`).

The evidence counts the layers cast and the parameter bytes before and after, checked again after the run
(the weights must be back in fp8 between calls).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from diffgentor.errors import ConfigError, UnsupportedError
from diffgentor.optimize.base import Optimizer
from diffgentor.optimize.registry import register
from diffgentor.optimize.targets import check_component_names, component_mapping, resolve_components

#: Option value -> the torch dtype's attribute name (looked up when applied: no torch at import).
STORAGE_DTYPES = ("float8_e4m3fn", "float8_e5m2")


@dataclass
class LayerwiseCastingSettings:
    """Store weights in 8 bits and compute in the run's dtype (bf16 on GPU, fp32 on CPU).

    - `storage_dtype`: `float8_e4m3fn` (default: more mantissa, the usual choice for weights) or
      `float8_e5m2` (more range, less precision). Either halves bf16 weight memory (a quarter of fp32);
      every layer pays an upcast per call, and outputs drift slightly (measured max pixel diff ~0.02-0.04 on
      the tiny testbeds).
    - `components`: which components to cast; `transformer` means the denoiser (`unet` on SD/SDXL).
    - `skip_modules_pattern`: regexes of module names kept in full precision; null (default) uses each
      model's own list (norms, positional and patch embeddings: precision-critical).
    """

    name: str = "layerwise_casting"
    storage_dtype: str = "float8_e4m3fn"
    components: list[str] = field(default_factory=lambda: ["transformer"])
    skip_modules_pattern: Optional[list[str]] = None


def parameter_bytes(module: Any) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def layers_stored_in(module: Any, dtype: Any) -> int:
    """Leaf layers whose weight is stored in `dtype`."""
    import torch

    return sum(1 for m in module.modules()
               if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dtype == dtype)


@register
class LayerwiseCasting(Optimizer):
    name = "layerwise_casting"
    stage = "storage_dtype"
    config_group = "memory"
    Settings = LayerwiseCastingSettings

    @property
    def storage_dtype(self) -> Any:
        import torch

        return getattr(torch, self.settings.storage_dtype)

    def check(self, family: str) -> None:
        if self.settings.storage_dtype not in STORAGE_DTYPES:
            raise ConfigError(f"memory.storage_dtype={self.settings.storage_dtype!r}: use one of "
                              f"{', '.join(STORAGE_DTYPES)}")
        check_component_names("memory.components", self.settings.components, family)

    def apply(self, pipe: Any) -> None:
        s = self.settings
        self._mapping = component_mapping(s.components, pipe)
        self._components = resolve_components("memory.components", s.components, pipe)
        self._bytes_before, self._compute_dtypes = {}, {}
        kwargs = {} if s.skip_modules_pattern is None else {"skip_modules_pattern": tuple(s.skip_modules_pattern)}
        for name, module in self._components.items():
            self._bytes_before[name] = parameter_bytes(module)
            self._compute_dtypes[name] = module.dtype
            module.enable_layerwise_casting(storage_dtype=self.storage_dtype, compute_dtype=module.dtype, **kwargs)

    def evidence(self, pipe: Any) -> dict:
        cast = {name: layers_stored_in(m, self.storage_dtype) for name, m in self._components.items()}
        if not all(cast.values()):
            raise UnsupportedError(f"memory=layerwise_casting: no layer of {[n for n, c in cast.items() if not c]} "
                                   f"rests in {self.settings.storage_dtype} after the run")
        return {
            "components": self._mapping,
            "storage_dtype": self.settings.storage_dtype,
            "compute_dtype": {n: str(d).replace("torch.", "") for n, d in self._compute_dtypes.items()},
            "layers_cast": cast,
            "parameter_bytes_before": self._bytes_before,
            "parameter_bytes_after": {name: parameter_bytes(m) for name, m in self._components.items()},
        }
