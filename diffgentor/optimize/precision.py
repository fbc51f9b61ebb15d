"""TF32 matmul/cuDNN math (seed: enabled by default). The weights' dtype is chosen at load (pipeline.py)."""

from __future__ import annotations

from typing import Any

from diffgentor.optimize.base import Optimizer
from diffgentor.optimize.registry import register


#: torch's per-backend TF32 switches (the `fp32_precision` API, torch >= 2.9): "tf32" or "ieee". Mixing them
#: with the legacy flags (`allow_tf32`, `set_float32_matmul_precision`) is refused by torch when read back.
FP32_PRECISION_SWITCHES = ("cuda.matmul", "cudnn.conv", "cudnn.rnn")


def _switch(path: str) -> Any:
    import torch

    backend = torch.backends
    for part in path.split("."):
        backend = getattr(backend, part)
    return backend


def has_fp32_precision_api() -> bool:
    return all(hasattr(_switch(path), "fp32_precision") for path in FP32_PRECISION_SWITCHES)


def tf32_flags() -> dict:
    """The state TF32 is in, read through the same API that sets it."""
    import torch

    if has_fp32_precision_api():
        return {f"{path}.fp32_precision": _switch(path).fp32_precision for path in FP32_PRECISION_SWITCHES}
    return {
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def set_tf32(enabled: bool) -> None:
    """Set every switch PyTorch reads for TF32 on CUDA, so `false` really turns it off (cuDNN defaults to on);
    torch's current API where it exists, else the legacy flags (never both)."""
    import torch

    if has_fp32_precision_api():
        for path in FP32_PRECISION_SWITCHES:
            _switch(path).fp32_precision = "tf32" if enabled else "ieee"
        return
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    torch.set_float32_matmul_precision("high" if enabled else "highest")


def restore_tf32(flags: dict) -> None:
    """Put back a state read by tf32_flags (the values before the run, not merely "off")."""
    import torch

    if has_fp32_precision_api():
        for path in FP32_PRECISION_SWITCHES:
            _switch(path).fp32_precision = flags[f"{path}.fp32_precision"]
        return
    torch.backends.cuda.matmul.allow_tf32 = flags["cuda.matmul.allow_tf32"]
    torch.backends.cudnn.allow_tf32 = flags["cudnn.allow_tf32"]
    torch.set_float32_matmul_precision(flags["float32_matmul_precision"])


def tf32_capable_device(device: str) -> bool:
    """TF32 tensor cores exist on NVIDIA Ampere (compute capability 8.0) and newer: asked of the run's GPU."""
    import torch

    return (device.startswith("cuda") and torch.cuda.is_available()
            and torch.cuda.get_device_capability(torch.device(device))[0] >= 8)


@register
class TF32(Optimizer):
    """Always planned: records the TF32 state the run used, on or off (`precision.tf32`)."""

    name = "tf32"
    stage = "precision"

    @classmethod
    def select(cls, run_cfg: Any) -> Any:
        return {"enabled": bool(run_cfg.precision.tf32)}

    def apply(self, pipe: Any) -> None:
        self._previous = tf32_flags()
        set_tf32(self.settings["enabled"])

    def evidence(self, pipe: Any) -> dict:
        flags = tf32_flags()
        flags["effective"] = self.settings["enabled"] and tf32_capable_device(self.device)
        if self.settings["enabled"] and not flags["effective"]:
            flags["note"] = "flags set, but this device has no TF32 math (needs an Ampere+ GPU)"
        return flags

    def remove(self, pipe: Any) -> None:
        self.release()

    def release(self) -> None:
        """The flags are process-wide: back to what they were before the run, for the next job of a sweep."""
        previous = getattr(self, "_previous", None)
        if previous is not None:
            restore_tf32(previous)
            self._previous = None
