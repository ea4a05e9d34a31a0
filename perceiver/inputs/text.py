"""Token input: UTF-8 bytes or any token ids, embedded and added to learned positions."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from perceiver.config import register
from perceiver.inputs.base import check_tensor
from perceiver.positions import LearnedPositions


@register("tokens")
class TokenInputAdapter(nn.Module):
    """Token ids ``[B, L]`` (L <= max_seq_len) -> embeddings + learned positions ``[B, L, dim]``."""

    @dataclass
    class Config:
        vocab_size: int = 262
        dim: int = 768
        max_seq_len: int = 2048

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.dim)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.positions = LearnedPositions(config.max_seq_len, config.dim)
        self.output_dim = config.dim

    def forward(self, inputs: Tensor, attention_mask: Tensor | None = None):
        check_tensor("inputs", inputs, 2, floating=False)
        length, limit = inputs.shape[1], self.config.max_seq_len
        if length > limit:
            raise ValueError(f"inputs: expected at most max_seq_len={limit} tokens, got {length}")
        if inputs.numel() and (int(inputs.min()) < 0 or int(inputs.max()) >= self.config.vocab_size):
            raise ValueError(f"inputs: expected token ids in [0, {self.config.vocab_size}), got "
                             f"[{int(inputs.min())}, {int(inputs.max())}]")
        x = self.embedding(inputs.long())
        x += self.positions()[:length]  # in place, and a view of the table: no [B, L, dim] copies
        return x, attention_mask
