"""channels_last memory format for the compiled components (`compile.channels_last`, seed: always with compile).

Only 4-D tensors (convolution weights) have a channels-last layout; the evidence counts how many were
converted per component, and warns when a component has none (a DiT such as Flux: nothing to gain).
"""

from __future__ import annotations

from typing import Any

from diffgentor.optimize.base import Optimizer
from diffgentor.optimize.registry import register


def channels_last_weights(module: Any) -> tuple[int, int]:
    """(4-D parameters stored channels-last, all 4-D parameters) of `module`."""
    import torch

    four_d = [p for p in module.parameters() if p.dim() == 4]
    return sum(p.is_contiguous(memory_format=torch.channels_last) for p in four_d), len(four_d)


@register
class ChannelsLast(Optimizer):
    name = "channels_last"
    stage = "memory_layout"

    @classmethod
    def select(cls, run_cfg: Any) -> Any:
        group = cls.active_group(run_cfg, "compile")
        if group is None or not getattr(group, "channels_last", False):
            return None
        return {"components": list(group.components)}

    def apply(self, pipe: Any) -> None:
        import torch

        from diffgentor.optimize.targets import resolve_components

        self._components = resolve_components("compile.components", self.settings["components"], pipe)
        for module in self._components.values():
            module.to(memory_format=torch.channels_last)

    def evidence(self, pipe: Any) -> dict:
        counts = {name: channels_last_weights(module) for name, module in self._components.items()}
        evidence: dict = {"conv_weights_channels_last": {name: done for name, (done, _) in counts.items()},
                          "conv_weights_total": {name: total for name, (_, total) in counts.items()}}
        idle = [name for name, (_, total) in counts.items() if total == 0]
        if idle:
            evidence["warnings"] = [f"{', '.join(idle)} has no 4-D (conv) weights: channels_last changed nothing "
                                    "there; set compile.channels_last=false to drop it"]
        return evidence

    def remove(self, pipe: Any) -> None:
        import torch

        for module in self._components.values():
            module.to(memory_format=torch.contiguous_format)
