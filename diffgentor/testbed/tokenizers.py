"""Tokenizers built from an in-memory vocabulary, so a testbed needs no hub and no sentencepiece file.

Both save to tokenizer.json through the pipeline's `save_pretrained` and reload offline with the
ordinary `from_pretrained(dir)`.
"""

from __future__ import annotations

import string

from transformers import CLIPTokenizer, T5Tokenizer

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"


def _byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for raw bytes, in byte order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for byte in range(256):
        if byte not in chars:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def clip_vocab() -> dict[str, int]:
    """Byte-level vocab without merges: every byte, every byte as a word end, then bos and eos LAST.

    Why eos last: CLIP text models pool at the eos position; with eos the highest id, the legacy
    argmax-of-ids rule and the modern first-eos rule pick the same token, as in the real CLIP vocab.
    """
    alphabet = _byte_level_alphabet()
    tokens = alphabet + [ch + "</w>" for ch in alphabet] + [CLIP_BOS, CLIP_EOS]
    return {token: index for index, token in enumerate(tokens)}


def clip_tokenizer(model_max_length: int) -> CLIPTokenizer:
    """CLIP tokenizer; pad is eos as in SD 1.x. `model_max_length` must be set or pipelines pad to 1e30."""
    return CLIPTokenizer(vocab=clip_vocab(), merges=[], model_max_length=model_max_length)


def clip_token_ids() -> dict[str, int]:
    """The ids a CLIPTextConfig must agree with, so pooled output is read at eos."""
    vocab = clip_vocab()
    return {
        "vocab_size": len(vocab),
        "bos_token_id": vocab[CLIP_BOS],
        "eos_token_id": vocab[CLIP_EOS],
        "pad_token_id": vocab[CLIP_EOS],
    }


def t5_vocab() -> list[tuple[str, float]]:
    """Unigram vocab of single characters: specials at T5's fixed ids 0-2, then the word-start mark."""
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    return specials + [(ch, -5.0) for ch in chars]


def t5_tokenizer(model_max_length: int) -> T5Tokenizer:
    """T5 tokenizer (pad 0, eos 1, unk 2) with no <extra_id_*> sentinels, which an encoder never needs."""
    return T5Tokenizer(vocab=t5_vocab(), extra_ids=0, model_max_length=model_max_length)


TOKENIZER_BUILDERS = {"CLIPTokenizer": clip_tokenizer, "T5Tokenizer": t5_tokenizer}
