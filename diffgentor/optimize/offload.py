"""Offloading (`+memory=model_cpu_offload | sequential_cpu_offload | group_offload`): weights rest in CPU memory
and move to the accelerator only while they compute.

All three need an accelerator: on a CPU run the "onload" and "offload" devices are the same memory, nothing
would move (measured: group offload on CPU, even to disk, keeps every weight resident), so they are refused
before load. The evidence says where each component's weights rest after the run and how many hooks move them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from diffgentor.errors import UnsupportedError
from diffgentor.internals import execution_device, hook_registry
from diffgentor.optimize.base import Optimizer
from diffgentor.optimize.registry import register
from diffgentor.optimize.targets import module_components


@dataclass
class ModelCpuOffloadSettings:
    """Whole models move to the accelerator when called and back when the next one runs (accelerate hooks).
    Peak accelerator memory: the largest model plus activations; costs one host-to-device copy per model per
    image. The mildest offload: use it first when the pipeline does not fit."""

    name: str = "model_cpu_offload"


@dataclass
class SequentialCpuOffloadSettings:
    """Every leaf layer moves to the accelerator just for its own forward: the least accelerator memory (a few
    layers), and very slow (weights cross the bus at every step). A last resort."""

    name: str = "sequential_cpu_offload"


@dataclass
class GroupOffloadSettings:
    """Groups of blocks move to the accelerator in turn (diffusers group offloading), between the two above.

    - `offload_type`: `block_level` (default; groups of `num_blocks_per_group` blocks: fewer, larger copies)
      or `leaf_level` (each layer: least memory, most copies; best with use_stream).
    - `num_blocks_per_group`: blocks per group for block_level (default 1). More: faster, more memory.
    - `use_stream`: overlap the next group's copy with compute on a CUDA stream (default true; CUDA only):
      faster, slightly more memory (the prefetched group).
    - `offload_to_disk_path`: keep offloaded weights in safetensors files under this folder instead of CPU
      memory (null, default: CPU memory). Saves host RAM, costs disk reads.
    """

    name: str = "group_offload"
    offload_type: str = "block_level"
    num_blocks_per_group: int = 1
    use_stream: bool = True
    offload_to_disk_path: Optional[str] = None


def resting_devices(pipe: Any) -> dict[str, str]:
    """Device type of each module component's first parameter, as it rests between calls."""
    devices = {}
    for name, module in module_components(pipe).items():
        param = next(module.parameters(), None)
        devices[name] = "meta" if param is not None and param.is_meta else (
            param.device.type if param is not None else "none")
    return devices


class _Offload(Optimizer):
    stage = "offload"
    config_group = "memory"

    def check(self, family: str) -> None:
        if self.device == "cpu":
            raise UnsupportedError(
                f"memory={self.name} moves weights between CPU memory and an accelerator, and this run is on cpu "
                "(nothing would move); run on a GPU (device=cuda) or drop +memory"
            )

    def evidence(self, pipe: Any) -> dict:
        hooked = self.hooked_modules(pipe)
        if sum(hooked.values()) == 0:
            raise UnsupportedError(f"memory={self.name}: no offload hook is installed on any component")
        return {"execution_device": str(execution_device(pipe)), "weights_rest_on": resting_devices(pipe),
                "offload_hooks": hooked}

    def hooked_modules(self, pipe: Any) -> dict[str, int]:
        """Per component, the modules carrying this option's offload hook."""
        return {name: sum(1 for m in module.modules() if hasattr(m, "_hf_hook"))
                for name, module in module_components(pipe).items()}

    def remove(self, pipe: Any) -> None:
        pipe.remove_all_hooks()
        pipe.to(self.device)


@register
class ModelCpuOffload(_Offload):
    name = "model_cpu_offload"
    Settings = ModelCpuOffloadSettings

    def apply(self, pipe: Any) -> None:
        pipe.enable_model_cpu_offload(device=self.device)


@register
class SequentialCpuOffload(_Offload):
    name = "sequential_cpu_offload"
    Settings = SequentialCpuOffloadSettings

    def apply(self, pipe: Any) -> None:
        pipe.enable_sequential_cpu_offload(device=self.device)


@register
class GroupOffload(_Offload):
    name = "group_offload"
    Settings = GroupOffloadSettings

    def check(self, family: str) -> None:
        super().check(family)
        if self.settings.offload_type not in ("block_level", "leaf_level"):
            raise UnsupportedError(f"memory.offload_type={self.settings.offload_type!r}: use block_level or "
                                   "leaf_level")

    def apply(self, pipe: Any) -> None:
        import torch

        s = self.settings
        use_stream = s.use_stream and self.device.startswith("cuda")
        pipe.enable_group_offload(
            onload_device=torch.device(self.device), offload_device=torch.device("cpu"),
            offload_type=s.offload_type,
            num_blocks_per_group=s.num_blocks_per_group if s.offload_type == "block_level" else None,
            use_stream=use_stream, offload_to_disk_path=s.offload_to_disk_path,
        )

    def hooked_modules(self, pipe: Any) -> dict[str, int]:
        def has_group_hook(m: Any) -> bool:
            registry = hook_registry(m)
            return registry is not None and registry.get_hook("group_offloading") is not None

        return {name: sum(1 for m in module.modules() if has_group_hook(m))
                for name, module in module_components(pipe).items()}

    #: diffusers has no way to take group offloading off again (hooks, lazy prefetch trackers, stream state).
    remove = Optimizer.remove
