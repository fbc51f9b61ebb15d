"""Attention processors that route through diffusers' dispatcher, for the models whose own processors don't.

diffusers 0.42 honours `model.set_attention_backend(...)` only in processors that call
`attention_dispatch.dispatch_attention_fn` (Flux, QwenImage). SD, SDXL, PixArt (AttnProcessor2_0) and SD3
(JointAttnProcessor2_0) call `F.scaled_dot_product_attention` directly, so the setting is silently ignored
there. The two processors below compute the same thing as those (and as their Fused* variants: both read
fused `to_qkv` / `to_kv` / `to_added_qkv` projections when `attn.fused_projections` is set) but call the
dispatcher, so the chosen backend really runs. With the `native` backend they are numerically equal to SDPA.

Dispatcher tensors are laid out (batch, sequence, heads, head_dim); SDPA's are (batch, heads, sequence, dim).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.attention_processor import (
    AttnProcessor2_0,
    FusedAttnProcessor2_0,
    FusedJointAttnProcessor2_0,
    JointAttnProcessor2_0,
)

from diffgentor.errors import UnsupportedError


def _heads(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, sequence, heads * dim) -> (batch, sequence, heads, dim)."""
    return tensor.unflatten(-1, (heads, -1))


def _split(tensor: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
    return tensor.chunk(parts, dim=-1)


class DispatchAttnProcessor:
    """AttnProcessor2_0 / FusedAttnProcessor2_0 semantics (self- and cross-attention, optional mask, spatial
    and group norm, residual, output rescale), with attention computed by `dispatch_attention_fn`."""

    #: Set by `ModelMixin.set_attention_backend`; None means the dispatcher's active backend.
    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, temb: Optional[torch.Tensor] = None,
                 *args: Any, **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        batch, key_length, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key_length, batch)
            # (batch * heads, query_len, key_len) -> (batch, heads, query_len, key_len), as SDPA expects
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query, key, value = self._projections(attn, hidden_states, encoder_hidden_states)
        query, key, value = (_heads(t, attn.heads) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = dispatch_attention_fn(query, key, value, attn_mask=attention_mask,
                                              backend=self._attention_backend,
                                              parallel_config=self._parallel_config)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    @staticmethod
    def _projections(attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor]):
        fused = getattr(attn, "fused_projections", False)
        if encoder_hidden_states is None:
            if fused:
                return _split(attn.to_qkv(hidden_states), 3)
            return attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        query = attn.to_q(hidden_states)
        if fused:
            key, value = _split(attn.to_kv(encoder_hidden_states), 2)
        else:
            key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        return query, key, value


class DispatchJointAttnProcessor:
    """JointAttnProcessor2_0 (SD3 MM-DiT) semantics through `dispatch_attention_fn`: sample and context tokens
    attend jointly (sample first), with qk-norms on both streams (SD3.5) also when projections are fused —
    which diffusers' FusedJointAttnProcessor2_0 skips. Like the original, it ignores `attention_mask`."""

    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, *args: Any, **kwargs: Any):
        fused = getattr(attn, "fused_projections", False)
        sample_length = hidden_states.shape[1]
        if fused:
            query, key, value = _split(attn.to_qkv(hidden_states), 3)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query, key, value = (_heads(t, attn.heads) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if encoder_hidden_states is not None:
            if fused and hasattr(attn, "to_added_qkv"):
                context = _split(attn.to_added_qkv(encoder_hidden_states), 3)
            else:
                context = (attn.add_q_proj(encoder_hidden_states), attn.add_k_proj(encoder_hidden_states),
                           attn.add_v_proj(encoder_hidden_states))
            c_query, c_key, c_value = (_heads(t, attn.heads) for t in context)
            if attn.norm_added_q is not None:
                c_query = attn.norm_added_q(c_query)
            if attn.norm_added_k is not None:
                c_key = attn.norm_added_k(c_key)
            query = torch.cat([query, c_query], dim=1)
            key = torch.cat([key, c_key], dim=1)
            value = torch.cat([value, c_value], dim=1)

        hidden_states = dispatch_attention_fn(query, key, value, backend=self._attention_backend,
                                              parallel_config=self._parallel_config)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is not None:
            hidden_states, encoder_hidden_states = hidden_states[:, :sample_length], hidden_states[:, sample_length:]
            if not attn.context_pre_only:
                encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if encoder_hidden_states is not None:
            return hidden_states, encoder_hidden_states
        return hidden_states


#: diffusers processors that call SDPA directly -> the dispatcher-based processor computing the same thing.
REPLACEMENTS: dict[type, type] = {
    AttnProcessor2_0: DispatchAttnProcessor,
    FusedAttnProcessor2_0: DispatchAttnProcessor,
    JointAttnProcessor2_0: DispatchJointAttnProcessor,
    FusedJointAttnProcessor2_0: DispatchJointAttnProcessor,
}


def honours_backend(processor: Any) -> bool:
    """A processor honours set_attention_backend when it carries the dispatcher's `_attention_backend` slot."""
    return hasattr(processor, "_attention_backend")


def attention_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Every module of `model` that owns an attention processor, by qualified name."""
    return {name: m for name, m in model.named_modules() if hasattr(m, "set_processor") and hasattr(m, "processor")}


def replace_processors(model: torch.nn.Module, classes: tuple[type, ...]) -> dict[str, int]:
    """Replace every processor of `model` whose class is in `classes` by its dispatcher twin.

    Returns {original processor class name: count replaced}.
    """
    replaced: dict[str, int] = {}
    for module in attention_modules(model).values():
        processor = module.processor
        if type(processor) in classes:
            module.set_processor(REPLACEMENTS[type(processor)]())
            key = type(processor).__name__
            replaced[key] = replaced.get(key, 0) + 1
    return replaced


def route_through_dispatcher(model: torch.nn.Module) -> dict[str, int]:
    """Make every attention module of `model` call the dispatcher; returns what was replaced.

    A processor that neither honours the dispatcher nor has a twin here is refused by name: leaving it would
    silently ignore the chosen backend.
    """
    replaced = replace_processors(model, tuple(REPLACEMENTS))
    for name, module in attention_modules(model).items():
        if not honours_backend(module.processor):
            raise UnsupportedError(
                f"{type(model).__name__}.{name} uses {type(module.processor).__name__}, which calls attention "
                "without diffusers' dispatcher, and diffgentor has no dispatcher twin for it: the attention "
                "backend would be silently ignored; drop +attention for this model"
            )
    return replaced
