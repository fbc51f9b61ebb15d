"""Tokenizers built from an in-memory vocabulary, so a testbed needs no hub and no sentencepiece file.

All save to tokenizer.json through the pipeline's `save_pretrained` and reload offline with the
ordinary `from_pretrained(dir)`.
"""

from __future__ import annotations

import re
import string

from tokenizers import AddedToken
from transformers import CLIPTokenizer, Qwen2Tokenizer, T5Tokenizer

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


QWEN_PAD = "<|endoftext|>"
QWEN_IM_START = "<|im_start|>"
QWEN_IM_END = "<|im_end|>"
#: The system prefix of diffusers' QwenImagePipeline.prompt_template_encode (0.42.1). The pipeline drops the
#: first `prompt_template_encode_start_idx` (34) hidden states, the length of this prefix in the real Qwen2.5
#: vocab, where every word is one token. Merges that make each of these words one token give the same 34
#: here (tests/test_testbed.py checks it against the pipeline's own template), so only the user prompt's
#: states reach the transformer, as on the real model.
QWEN_TEMPLATE_PREFIX = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n"
)


def _byte_level_words(text: str) -> list[str]:
    """`text` split as Qwen2's pre-tokenizer splits it (regex, then byte-level), specials left out."""
    probe = Qwen2Tokenizer(vocab={QWEN_PAD: 0}, merges=[])
    pre_tokenizer = probe.backend_tokenizer.pre_tokenizer
    words = []
    for chunk in re.split(f"({re.escape(QWEN_IM_START)}|{re.escape(QWEN_IM_END)})", text):
        if chunk and chunk not in (QWEN_IM_START, QWEN_IM_END):
            words += [word for word, _ in pre_tokenizer.pre_tokenize_str(chunk)]
    return words


def qwen2_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE: the 256 byte symbols, left-to-right merges spelling each template word as one token,
    then the three specials LAST (pad/eos <|endoftext|>, <|im_start|>, <|im_end|>)."""
    tokens = _byte_level_alphabet()
    merges: list[tuple[str, str]] = []
    for word in _byte_level_words(QWEN_TEMPLATE_PREFIX):
        for end in range(2, len(word) + 1):
            merged = word[:end]
            if merged not in tokens:
                tokens.append(merged)
                merges.append((word[: end - 1], word[end - 1]))
    tokens += [QWEN_PAD, QWEN_IM_START, QWEN_IM_END]
    return {token: index for index, token in enumerate(tokens)}, merges


def qwen2_tokenizer(model_max_length: int) -> Qwen2Tokenizer:
    """Qwen2 tokenizer (pad = eos = <|endoftext|>) with <|im_start|>/<|im_end|> as special tokens."""
    vocab, merges = qwen2_vocab_and_merges()
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in (QWEN_IM_START, QWEN_IM_END)],
                         special_tokens=True)
    return tokenizer


def qwen2_token_ids() -> dict[str, int]:
    """The ids a Qwen2.5 text config must agree with."""
    vocab, _ = qwen2_vocab_and_merges()
    return {"vocab_size": len(vocab), "bos_token_id": vocab[QWEN_PAD], "eos_token_id": vocab[QWEN_IM_END],
            "pad_token_id": vocab[QWEN_PAD]}


TOKENIZER_BUILDERS = {"CLIPTokenizer": clip_tokenizer, "T5Tokenizer": t5_tokenizer, "Qwen2Tokenizer": qwen2_tokenizer}
