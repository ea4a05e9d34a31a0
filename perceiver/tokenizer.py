"""UTF-8 byte tokenizer with the Perceiver IO special tokens (the layout of DeepMind's
language-perceiver and transformers' ``PerceiverTokenizer``): ids 0-5 are
``[PAD] [BOS] [EOS] [MASK] [CLS] [SEP]``, byte ``b`` is id ``b + 6``; 262 ids in all."""

from __future__ import annotations

import torch
from torch import Tensor

PAD, BOS, EOS, MASK, CLS, SEP = range(6)
SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[MASK]", "[CLS]", "[SEP]")
OFFSET = len(SPECIAL_TOKENS)
VOCAB_SIZE = 256 + OFFSET


def encode(text: str, add_special_tokens: bool = False) -> list[int]:
    """Token ids of ``text``'s UTF-8 bytes (with ``[CLS] ... [SEP]`` if asked)."""
    if not isinstance(text, str):
        raise ValueError(f"text: expected a str, got {type(text).__name__} {text!r:.60}")
    ids = [b + OFFSET for b in text.encode("utf-8")]
    return [CLS, *ids, SEP] if add_special_tokens else ids


def decode(ids, errors: str = "replace") -> str:
    """Text of the byte ids in ``ids`` (special tokens are dropped; invalid UTF-8 replaced)."""
    ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    return bytes(i - OFFSET for i in ids if OFFSET <= i < VOCAB_SIZE).decode("utf-8", errors=errors)


def batch_encode(texts: list[str], max_length: int, add_special_tokens: bool = False):
    """Right-padded ``input_ids [B, L]`` and ``attention_mask [B, L]`` (L = longest, <= max_length;
    longer texts are truncated)."""
    if isinstance(texts, str):
        raise ValueError(f"texts: expected a list of str, got one str {texts!r:.60}")
    rows = [encode(t, add_special_tokens)[:max_length] for t in texts]
    length = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), length), PAD, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask
