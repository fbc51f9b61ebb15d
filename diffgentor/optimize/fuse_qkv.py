"""Fused QKV projections (`fuse_qkv=true`): one matmul for query, key and value instead of three.

Applied with the models' own `fuse_qkv_projections()` on the denoiser and on the VAE where it has attention,
then verified: the fused layers must exist, and the evidence counts how often they ran in the evidence pass
(forward hooks attached for it only, never in the timed calls). Where diffusers
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

        self._layers: dict[str, dict[str, Any]] = {}
        self._calls: dict[str, int] = {}
        self._handles: list = []
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
        layers = fused_layers(model)
        if not layers and required:
            raise UnsupportedError(
                f"fuse_qkv: {type(model).__name__}.fuse_qkv_projections() created no fused projection; "
                "set fuse_qkv=false for this model"
            )
        self._layers[name] = layers

    def instrument(self, pipe: Any) -> None:
        """For the evidence pass: count the calls of the fused layers."""
        for name, layers in self._layers.items():
            self._calls[name] = 0
            self._handles += [layer.register_forward_hook(self._counting(name)) for layer in layers.values()]

    def _counting(self, name: str) -> Any:
        def bump(*_: Any) -> None:
            self._calls[name] += 1
        return bump

    def uninstrument(self, pipe: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def evidence(self, pipe: Any) -> dict:
        from diffgentor.optimize.targets import denoiser_of

        attr, _ = denoiser_of(pipe)
        if attr not in self._calls:
            raise UnsupportedError("fuse_qkv: no evidence pass ran, so no fused layer call was counted")
        if self._calls[attr] == 0:
            raise UnsupportedError(f"fuse_qkv: the fused projections of {attr} exist but never ran: its attention "
                                   "processors ignore them")
        evidence = {"fused_layers": {name: count_by_kind(layers) for name, layers in self._layers.items()},
                    "fused_layer_calls": dict(self._calls), "measured_in": "evidence pass"}
        if self._sd3_repaired:
            evidence["sd3_processors_repaired"] = self._sd3_repaired
        return evidence

    def remove(self, pipe: Any) -> None:
        self.uninstrument(pipe)
        for name in self._layers:
            getattr(pipe, name).unfuse_qkv_projections()
