"""SD3's last joint block drops its text stream and returns `(None, hidden_states)` (`context_pre_only`).

diffusers' FirstBlockCache takes the difference of every output of the tail block and fails on that None
(TypeError), so on SD3 it cannot run as shipped. SD3Transformer2DModel never reads the text stream after the
last block, so returning the block's `encoder_hidden_states` input unchanged in place of the None changes
nothing in the image and lets the block hooks treat the block like any other. The wrapper sits under the
cache's hooks (installed first, removed last).
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def _pre_only_blocks(denoiser: torch.nn.Module) -> list[torch.nn.Module]:
    blocks = getattr(denoiser, "transformer_blocks", None) or []
    return [b for b in blocks if getattr(b, "context_pre_only", False) is True]


def _keep_text_stream(block: torch.nn.Module) -> None:
    inner = block.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        output = inner(*args, **kwargs)
        if isinstance(output, tuple) and output[0] is None:
            text = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[1]
            return (text, *output[1:])
        return output

    block.forward = forward


def keep_text_stream_of_pre_only_blocks(denoiser: torch.nn.Module) -> Callable[[], None]:
    """Wrap every `context_pre_only` block (none outside SD3); returns the function that unwraps them."""
    wrapped = [(block, vars(block).get("forward")) for block in _pre_only_blocks(denoiser)]
    for block, _ in wrapped:
        _keep_text_stream(block)

    def restore() -> None:
        for block, previous in wrapped:
            if previous is None:
                del block.forward
            else:
                block.forward = previous

    return restore
