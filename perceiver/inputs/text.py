"""Token input: UTF-8 bytes or any token ids, embedded and added to learned positions, optionally
with running sums that tell each position what came before it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from perceiver.config import register
from perceiver.inputs.base import check_tensor
from perceiver.positions import LearnedPositions


class RunningSums(nn.Module):
    """``x + MLP(cumsum(Linear(x)) / 8)`` for ``x [B, L, dim]``: each position gets ``channels``
    running sums of learned projections of the positions up to it (an O(L) feature; a sum can
    count, e.g. brackets opened minus closed, the nesting depth, which no position embedding
    carries). The last layer starts at zero, so the adapter starts as it would without it. Sums
    are taken in float32 whatever the autocast or parameter dtype; padding at the end never changes them."""

    def __init__(self, dim: int, channels: int):
        super().__init__()
        self.project = nn.Linear(dim, channels)
        self.mlp = nn.Sequential(nn.Linear(channels, dim), nn.GELU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, x: Tensor) -> Tensor:
        sums = torch.cumsum(self.project(x).float(), dim=1) / 8
        return x + self.mlp(sums.to(x.dtype))


@register("tokens")
class TokenInputAdapter(nn.Module):
    """Token ids ``[B, L]`` (L <= max_seq_len) -> embeddings + learned positions ``[B, L, dim]``."""

    @dataclass
    class Config:
        vocab_size: int = 262
        dim: int = 768
        max_seq_len: int = 2048
        running_sums: int = 0  # channels of RunningSums (0: none)

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.dim)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.positions = LearnedPositions(config.max_seq_len, config.dim)
        self.running_sums = RunningSums(config.dim, config.running_sums) if config.running_sums else None
        self.output_dim = config.dim

    def forward(self, inputs: Tensor, attention_mask: Tensor | None = None):
        check_tensor("inputs", inputs, 2, floating=False)
        length, limit = inputs.shape[1], self.config.max_seq_len
        if length > limit:
            raise ValueError(f"inputs: expected at most max_seq_len={limit} tokens, got {length}")
        if inputs.numel() and (int(inputs.min()) < 0 or int(inputs.max()) >= self.config.vocab_size):
            raise ValueError(f"inputs: expected token ids in [0, {self.config.vocab_size}), got "
                             f"[{int(inputs.min())}, {int(inputs.max())}]")
        x = self.embed(inputs)
        if self.running_sums is not None:
            x = self.running_sums(x)
        return x, attention_mask

    def embed(self, inputs: Tensor) -> Tensor:
        """Token embeddings plus positions ``[B, L, dim]``, before any running sums (ids unchecked)."""
        x = self.embedding(inputs.long())
        x += self.positions()[:inputs.shape[1]]  # in place, and a view of the table: no [B, L, dim] copies
        return x
