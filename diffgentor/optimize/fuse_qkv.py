"""Fused QKV projections (`fuse_qkv=true`): one matmul for query, key and value instead of three.

Applied with the models' own `fuse_qkv_projections()` on the denoiser and on the VAE where it has attention,
then verified: the fused layers must exist, and the evidence counts how often they ran. Where diffusers
fuses nothing (Sana, QwenImage) the compatibility table refuses it before load.

SD3 repair: diffusers' FusedJointAttnProcessor2_0 drops the qk-norms (SD3.5 changes output, measured max
diff 1.3 on a tiny qk-normed SD3) and cannot run SD3.5's self-only `attn2`; its processors are swapped for
the dispatcher twin, which reads the fused layers and keeps the norms.
"""

from __future__ import annotations

from typing import Any

from diffgentor.errors import UnsupportedError
from diffgentor.families import ALL_FAMILIES
from diffgentor.optimize.base import Optimizer
from diffgentor.optimize.registry import register

FUSED_LAYERS = ("to_qkv", "to_kv", "to_added_qkv")


def fused_layers(model: Any) -> dict[str, Any]:
    """Fused projection layers of `model`'s fused attention modules, by qualified name."""
    import torch

    from diffgentor.optimize.attention_processors import attention_modules

    found = {}
    for name, module in attention_modules(model).items():
        if not getattr(module, "fused_projections", False):
            continue
        for attr in FUSED_LAYERS:
            layer = getattr(module, attr, None)
            if isinstance(layer, torch.nn.Module):
                found[f"{name}.{attr}"] = layer
    return found


def count_by_kind(layers: dict[str, Any]) -> dict[str, int]:
    counts = {attr: 0 for attr in FUSED_LAYERS}
    for name in layers:
        counts[name.rsplit(".", 1)[1]] += 1
    return {k: v for k, v in counts.items() if v}


@register
class FuseQKV(Optimizer):
    name = "fuse_qkv"
    stage = "fuse_qkv"
    families = ALL_FAMILIES - {"sana", "qwenimage"}
    refused_because = "diffusers' fuse_qkv_projections() creates no fused layer there (measured: a silent no-op)"

    @classmethod
    def select(cls, run_cfg: Any) -> Any:
        return {"components": ["denoiser", "vae"]} if getattr(run_cfg, "fuse_qkv", False) else None

    def apply(self, pipe: Any) -> None:
        from diffusers.models.attention_processor import FusedJointAttnProcessor2_0

        from diffgentor.optimize.attention_processors import attention_modules, replace_processors
        from diffgentor.optimize.targets import denoiser_of, family_of

        self._counters: dict[str, Any] = {}
        self._handles: list = []
        self._fused: dict[str, dict[str, int]] = {}
        self._sd3_repaired = 0
        attr, model = denoiser_of(pipe)
        model.fuse_qkv_projections()
        if family_of(pipe) == "sd3":
            self._sd3_repaired = replace_processors(model, (FusedJointAttnProcessor2_0,)).get(
                FusedJointAttnProcessor2_0.__name__, 0)
        self._watch(attr, model, required=True)
        vae = getattr(pipe, "vae", None)
        if vae is not None and attention_modules(vae) and hasattr(vae, "fuse_qkv_projections"):
            vae.fuse_qkv_projections()
            self._watch("vae", vae, required=False)

    def _watch(self, name: str, model: Any, required: bool) -> None:
        from diffgentor.optimize.call_counter import CallCounter

        layers = fused_layers(model)
        if not layers and required:
            raise UnsupportedError(
                f"fuse_qkv: {type(model).__name__}.fuse_qkv_projections() created no fused projection; "
                "set fuse_qkv=false for this model"
            )
        self._fused[name] = count_by_kind(layers)
        counter = self._counters[name] = CallCounter()
        self._handles += [layer.register_forward_hook(counter.bump) for layer in layers.values()]

    def evidence(self, pipe: Any) -> dict:
        from diffgentor.optimize.call_counter import counts_inside_compiled
        from diffgentor.optimize.targets import denoiser_of

        calls = {name: counter.calls for name, counter in self._counters.items()}
        attr, _ = denoiser_of(pipe)
        if calls.get(attr, 0) == 0 and counts_inside_compiled():
            raise UnsupportedError(f"fuse_qkv: the fused projections of {attr} exist but never ran: its attention "
                                   "processors ignore them")
        evidence = {"fused_layers": self._fused, "fused_layer_calls": calls}
        if calls.get(attr, 0) == 0:
            evidence["warnings"] = ["calls inside CUDA-graph compiled code are not counted (counting would disable "
                                    "the CUDA graphs); the evidence is the fused layers' presence"]
        if self._sd3_repaired:
            evidence["sd3_processors_repaired"] = self._sd3_repaired
        return evidence

    def remove(self, pipe: Any) -> None:
        for handle in self._handles:
            handle.remove()
        for name in self._fused:
            getattr(pipe, name).unfuse_qkv_projections()
