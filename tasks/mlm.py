"""Byte-level masked language modelling: BERT-style masking of UTF-8 byte ids."""

from __future__ import annotations

import torch
from torch import Tensor

from perceiver import tokenizer

IGNORE = -100


def mask_bytes(ids: Tensor, generator: torch.Generator, prob: float = 0.15) -> tuple[Tensor, Tensor]:
    """Choose ``prob`` of the non-pad positions; of those 80% become ``[MASK]``, 10% a random byte,
    10% stay. Returns ``(masked_ids, labels)`` with ``labels = IGNORE`` where nothing is predicted."""
    chosen = (torch.rand(ids.shape, generator=generator) < prob) & (ids != tokenizer.PAD)
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    roll = torch.rand(ids.shape, generator=generator)
    random_bytes = torch.randint(tokenizer.OFFSET, tokenizer.VOCAB_SIZE, ids.shape, generator=generator)
    masked = torch.where(chosen & (roll < 0.8), torch.full_like(ids, tokenizer.MASK), ids)
    masked = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_bytes, masked)
    return masked, labels


def fill_mask(model, text: str, mask: str = "_") -> str:
    """Replace each ``mask`` character in ``text`` by the model's most likely byte."""
    ids = torch.tensor([tokenizer.encode(text)])
    where = ids[0] == tokenizer.encode(mask)[0]
    ids[0, where] = tokenizer.MASK
    with torch.no_grad():
        predicted = model(inputs=ids).logits.argmax(-1)
    return tokenizer.decode(torch.where(where, predicted[0], ids[0]))
