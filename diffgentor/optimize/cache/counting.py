"""The proof a cache did something: the denoiser blocks' multiply-accumulates that really ran.

Every Linear and Conv2d of the denoiser gets its `forward` wrapped, and every attention module its
processor, so that, when it really runs, it adds its multiply-accumulates (MACs) to the block it belongs to: a layer's
`output elements x MACs per output element`; an attention's core `2 x batch x query length x key length x
inner dim` (QK^T and AV; on tiny models it outweighs the projections). A skipped block (or a skipped
attention inside it) never runs them, so whatever skipped it (diffusers hooks, DeepCache's wrappers,
cache-dit's blocks) its count stays at zero; a batch halved by FasterCache counts half. Only layers and
attention processors are wrapped, never a block or an attention module: those are what caches replace the
forward of, so a skipped block or attention never reaches what is counted, whichever was attached first.
That lets the counter be attached for an evidence pass after the timed calls (cache/base.py), which therefore
carry no wrapper, no guard on a per-block closure under torch.compile, and no Python work per layer.
Nothing is inferred from a cache's own bookkeeping.

One row per denoiser call. A block's full cost is the most it cost in any call of the same generation with
the same input shapes (the first step always runs everything): QwenImage runs its classifier-free guidance
as a second call whose text is as long as the negative prompt, so a fully computed uncond call must not be
measured against the cond call's longer attention. `compute_fraction` = MACs run / full MACs over all block
calls.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import torch

from diffgentor.errors import UnsupportedError

#: ModuleList attributes that hold a DiT's repeated blocks (diffusers' own naming).
DIT_BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks", "blocks", "layers")
#: A block costs "computed" at >= this share of its full cost (float rounding aside), "skipped" at zero.
FULL_SHARE = 1.0 - 1e-9


def denoiser_blocks(denoiser: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(qualified name, module) of the denoiser's blocks: a UNet's down/mid/up blocks, a DiT's repeated blocks."""
    if hasattr(denoiser, "down_blocks") and hasattr(denoiser, "up_blocks"):
        blocks = [(f"down_blocks.{i}", b) for i, b in enumerate(denoiser.down_blocks)]
        if getattr(denoiser, "mid_block", None) is not None:
            blocks.append(("mid_block", denoiser.mid_block))
        return blocks + [(f"up_blocks.{i}", b) for i, b in enumerate(denoiser.up_blocks)]
    blocks = []
    for list_name in DIT_BLOCK_LISTS:
        module_list = getattr(denoiser, list_name, None)
        if isinstance(module_list, torch.nn.ModuleList):
            blocks += [(f"{list_name}.{i}", b) for i, b in enumerate(module_list)]
    return blocks


def _attention_classes() -> tuple[type, ...]:
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_processor import Attention

    return (Attention, AttentionModuleMixin)


def layer_cost(layer: torch.nn.Module) -> Callable[[tuple, dict, object], int]:
    """MACs of one call of a Linear or Conv2d, from its output size."""
    if isinstance(layer, torch.nn.Linear):
        per_element = layer.in_features
    else:
        per_element = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
    return lambda args, kwargs, output: output.numel() * per_element


def _sequence(tensor: torch.Tensor) -> tuple[int, int]:
    """(batch, tokens) of a (B, L, C) or (B, C, H, W) input."""
    return tensor.shape[0], tensor.shape[1] if tensor.dim() == 3 else tensor.shape[2] * tensor.shape[3]


def attention_cost(attention: torch.nn.Module) -> Callable[[tuple, dict, object], int]:
    """MACs of one attention core (QK^T and AV): self-attention over the hidden states, cross-attention to
    the text, or joint attention (added K/V projections: SD3, FLUX) over image and text tokens together."""
    inner = attention.inner_dim
    joint = hasattr(attention, "add_k_proj")

    def cost(args: tuple, kwargs: dict, output: object) -> int:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        batch, q_len = _sequence(hidden)
        k_len = q_len
        if context is not None:
            text = _sequence(context)[1]
            q_len, k_len = (q_len + text, q_len + text) if joint else (q_len, text)
        return 2 * batch * q_len * k_len * inner

    return cost


def input_shapes(args: tuple, kwargs: dict) -> tuple:
    """The shapes of a call's tensor arguments, positional then by keyword name."""
    positional = tuple(tuple(a.shape) for a in args if torch.is_tensor(a))
    named = tuple(sorted((k, tuple(v.shape)) for k, v in kwargs.items() if torch.is_tensor(v)))
    return positional + named


@dataclass
class _ProcessorSlot:
    """The attention processor a module had before the counter wrapped it."""

    processor: object


@dataclass
class CallRecord:
    generation: int
    #: Shapes of the call's tensor inputs: calls are compared only with calls of the same shapes.
    shapes: tuple = ()
    #: MACs per block, then one last entry for the layers outside the blocks (embedders, projections).
    macs: list[int] = field(default_factory=list)


class ComputeCounter:
    """Counts, per denoiser call, the MACs each block ran; `summary()` turns them into the evidence."""

    def __init__(self, denoiser: torch.nn.Module, generation: Callable[[], int]):
        self.denoiser = denoiser
        self.generation = generation
        self.blocks = denoiser_blocks(denoiser)
        if not self.blocks:
            raise UnsupportedError(f"{type(denoiser).__name__} has no down/up blocks or DiT block lists "
                                   f"({', '.join(DIT_BLOCK_LISTS)}): its skipped compute cannot be measured")
        self.calls: list[CallRecord] = []
        self._current: list[int] | None = None
        self._shapes: tuple = ()
        self._handles: list = []
        self._wrapped: list[tuple[torch.nn.Module, object]] = []

    def _counted(self) -> list[tuple[int, torch.nn.Module, Callable]]:
        """(slot, module, cost) for every Linear, Conv2d and attention (its processor is what gets counted);
        slot = block index, or len(blocks) for modules outside any block (embedders, final projection)."""
        owner = {}
        for index, (_, block) in enumerate(self.blocks):
            for module in block.modules():
                owner[id(module)] = index
        other, attention = len(self.blocks), _attention_classes()
        counted = []
        for module in self.denoiser.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                counted.append((owner.get(id(module), other), module, layer_cost(module)))
            elif isinstance(module, attention) and hasattr(module, "inner_dim"):
                counted.append((owner.get(id(module), other), module, attention_cost(module)))
        return counted

    def attach(self) -> None:
        self._handles.append(self.denoiser.register_forward_pre_hook(self._begin_call, with_kwargs=True))
        self._handles.append(self.denoiser.register_forward_hook(self._end_call, always_call=True))
        for slot, module, cost in self._counted():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                self._wrap(module, slot, cost)
            else:
                self._wrap_processor(module, slot, cost)

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module, previous in reversed(self._wrapped):
            if isinstance(previous, _ProcessorSlot):
                module.processor = previous.processor
            elif previous is None:
                del module.forward
            else:
                module.forward = previous
        self._wrapped.clear()

    def _wrap_processor(self, module: torch.nn.Module, slot: int, cost: Callable[[tuple, dict, object], int]) -> None:
        """Count an attention where it really computes: in its processor. A cache that skips attention (PAB,
        FasterCache) replaces the attention module's forward, so its processor is not called then."""
        processor = module.processor
        original = type(processor).__call__

        # The attention modules read the processor's __call__ signature to decide which keyword arguments
        # to pass on (FluxAttention drops the rest): keep the processor's own signature.
        @functools.wraps(original)
        def call(_: object, attn: torch.nn.Module, *args: object, **kwargs: object) -> object:
            output = processor(attn, *args, **kwargs)
            current = self._current
            if current is not None:
                current[slot] += cost(args, kwargs, output)
            return output

        counted = type(f"Counted{type(processor).__name__}", (), {"__call__": call})()
        self._wrapped.append((module, _ProcessorSlot(processor)))
        module.processor = counted

    def _wrap(self, module: torch.nn.Module, slot: int, cost: Callable[[tuple, dict, object], int]) -> None:
        inner = module.forward

        def forward(*args: object, **kwargs: object) -> object:
            output = inner(*args, **kwargs)
            current = self._current
            if current is not None:
                current[slot] += cost(args, kwargs, output)
            return output

        self._wrapped.append((module, vars(module).get("forward")))
        module.forward = forward

    @torch.compiler.disable
    def _begin_call(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self._current = [0] * (len(self.blocks) + 1)
        self._shapes = input_shapes(args, kwargs)

    @torch.compiler.disable
    def _end_call(self, module: torch.nn.Module, args: tuple, output: object) -> None:
        if self._current is not None:
            self.calls.append(CallRecord(self.generation(), self._shapes, self._current))
        self._current = None

    def _full_costs(self) -> dict[tuple, list[int]]:
        """Per generation and input shapes, each slot's largest cost in any such call (its full cost)."""
        full: dict[tuple, list[int]] = {}
        for call in self.calls:
            key = (call.generation, call.shapes)
            best = full.setdefault(key, [0] * len(call.macs))
            full[key] = [max(a, b) for a, b in zip(best, call.macs)]
        return full

    def summary(self) -> dict:
        """Block calls computed / partial / skipped, MACs run vs. full, and their ratio `compute_fraction`."""
        full = self._full_costs()
        n_blocks = len(self.blocks)
        counts = {"total": 0, "computed": 0, "partial": 0, "skipped": 0}
        ran = full_total = other_ran = other_full = 0
        per_call = []
        for call in self.calls:
            block_full = full[(call.generation, call.shapes)]
            call_ran = call_full = 0
            for slot in range(n_blocks):
                cost, cost_full = call.macs[slot], block_full[slot]
                counts["total"] += 1
                if cost == 0:
                    counts["skipped"] += 1
                elif cost >= FULL_SHARE * cost_full:
                    counts["computed"] += 1
                else:
                    counts["partial"] += 1
                call_ran, call_full = call_ran + cost, call_full + cost_full
            ran, full_total = ran + call_ran, full_total + call_full
            other_ran, other_full = other_ran + call.macs[-1], other_full + block_full[-1]
            per_call.append((call.generation, round(call_ran / call_full, 4) if call_full else None))
        last_generation = self.calls[-1].generation if self.calls else None
        return {
            "denoiser_calls": len(self.calls),
            "blocks_per_call": n_blocks,
            "block_calls": counts,
            "block_macs": {"computed": ran, "full": full_total},
            "compute_fraction": ran / full_total if full_total else None,
            "denoiser_compute_fraction": (ran + other_ran) / (full_total + other_full) if full_total else None,
            "last_generation_call_fractions": [f for g, f in per_call if g == last_generation],
        }
