"""TF32 matmul/cuDNN math (seed: enabled by default). The weights' dtype is chosen at load (pipeline.py)."""

from __future__ import annotations

from typing import Any

from diffgentor.optimize.base import Optimizer
from diffgentor.optimize.registry import register


def set_tf32(enabled: bool) -> None:
    """Set every switch PyTorch reads for TF32, so `false` really turns it off (cuDNN defaults to on)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    torch.set_float32_matmul_precision("high" if enabled else "highest")


def tf32_flags() -> dict:
    import torch

    return {
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def tf32_capable_device() -> bool:
    """TF32 tensor cores exist on NVIDIA Ampere (compute capability 8.0) and newer."""
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


@register
class TF32(Optimizer):
    """Always planned: records the TF32 state the run used, on or off (`precision.tf32`)."""

    name = "tf32"
    stage = "precision"

    @classmethod
    def select(cls, run_cfg: Any) -> Any:
        return {"enabled": bool(run_cfg.precision.tf32)}

    def apply(self, pipe: Any) -> None:
        set_tf32(self.settings["enabled"])

    def evidence(self, pipe: Any) -> dict:
        flags = tf32_flags()
        flags["effective"] = self.settings["enabled"] and tf32_capable_device()
        if self.settings["enabled"] and not flags["effective"]:
            flags["note"] = "flags set, but this device has no TF32 math (needs an Ampere+ GPU)"
        return flags

    def remove(self, pipe: Any) -> None:
        set_tf32(False)
