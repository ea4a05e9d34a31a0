"""Token input: UTF-8 bytes or any token ids, embedded and added to learned positions, optionally
with running sums that tell each position what came before it, and with the nesting depth of
bracketed text (an embedding, and a key bias that lets attention heads prefer the outer levels)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from perceiver.config import register
from perceiver.inputs.base import check_size, check_tensor
from perceiver.positions import LearnedPositions
from perceiver.streamed_attention import ChunkedInput


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


class NestingDepth(nn.Module):
    """The nesting depth of each token between an opening and a closing token id
    (``[MAX2[MIN34]]`` -> 1 1 1 1 1 2 2 2 2 2 2 2 1: a closing token belongs to the list it closes;
    an unmatched closing is at depth 0 and changes nothing), as the rows of an embedding
    (``embedding``, which the adapter adds; depths from ``max_depth - 1`` on share the last row)
    and, with ``slopes`` (one per head of the encoder's cross-attention), as a key bias
    ``[B, H, L] = -slope_h * depth``: ALiBi's fixed per-head slopes over the depth instead of the
    distance. A head with slope s weighs a token at depth d by e^(-s d): with slopes (0, 1, 2, 4)
    one head reads the whole input and the others ever more of the outer levels, from the first
    step (an attention that starts uniform over thousands of tokens finds the few at depth 1 too
    slowly to learn ListOps; docs/listops.md)."""

    def __init__(self, dim: int, open_id: int, close_id: int, slopes: tuple[float, ...] = (),
                 max_depth: int = 16):
        super().__init__()
        self.open_id, self.close_id, self.max_depth = open_id, close_id, max_depth
        self.embedding = nn.Embedding(max_depth, dim)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.register_buffer("slopes", torch.tensor(slopes, dtype=torch.float32), persistent=False)

    def depth(self, ids: Tensor) -> Tensor:
        """Depth ``[B, L]`` (long) of each token of ``ids [B, L]``: the lists open before it, plus
        one for an opening token. The walk of opens minus closes is reflected at 0 (an unmatched
        closing is ignored), so ``after`` counts the lists still open after each token."""
        opens, closes = (ids == self.open_id).long(), (ids == self.close_id).long()
        walk = torch.cumsum(opens - closes, dim=1)
        after = walk - torch.cummin(walk, dim=1).values.clamp(max=0)
        return F.pad(after[:, :-1], (1, 0)) + opens

    def forward(self, ids: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """(the embedding's rows ``[B, L]``: the depth, capped at ``max_depth - 1``; the key bias
        ``[B, H, L]`` with ``-inf`` where ``attention_mask`` is 0, or ``attention_mask`` itself
        without slopes)."""
        depth = self.depth(ids)
        rows = depth.clamp(max=self.max_depth - 1)
        if not len(self.slopes):
            return rows, attention_mask
        bias = -self.slopes[:, None] * depth[:, None, :].float()
        if attention_mask is not None:
            check_size("attention_mask", attention_mask.shape, ids.shape, "shape")
            bias = bias.masked_fill(~attention_mask.bool()[:, None, :], float("-inf"))
        return rows, bias


@register("tokens")
class TokenInputAdapter(nn.Module):
    """Token ids ``[B, L]`` (L <= max_seq_len) -> embeddings + learned positions ``[B, L, dim]``
    (+ nesting-depth embeddings with ``depth_tokens``; then ``RunningSums`` with ``running_sums``).
    The mask passes through, or becomes ``NestingDepth``'s key bias ``[B, H, L]`` with
    ``depth_slopes``."""

    @dataclass
    class Config:
        vocab_size: int = 262
        dim: int = 768
        max_seq_len: int = 2048
        running_sums: int = 0  # channels of RunningSums (0: none)
        depth_tokens: tuple[int, int] | None = None  # (opening id, closing id): NestingDepth
        depth_slopes: tuple[float, ...] = ()  # NestingDepth's key-bias slopes, one per cross-attention head
        max_depth: int = 16  # depths embedded (deeper tokens share the last embedding)

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.dim)
        nn.init.normal_(self.embedding.weight, std=0.02)
        self.positions = LearnedPositions(config.max_seq_len, config.dim)
        self.running_sums = RunningSums(config.dim, config.running_sums) if config.running_sums else None
        if config.depth_slopes and config.depth_tokens is None:
            raise ValueError(f"depth_slopes: expected depth_tokens (the opening and closing ids) with them, "
                             f"got depth_slopes={config.depth_slopes} and depth_tokens=None")
        if config.depth_tokens is not None and config.max_depth < 1:
            raise ValueError(f"max_depth: expected at least 1, got {config.max_depth}")
        self.depth = (None if config.depth_tokens is None else
                      NestingDepth(config.dim, *config.depth_tokens, config.depth_slopes, config.max_depth))
        self.output_dim = config.dim

    def forward(self, inputs: Tensor, attention_mask: Tensor | None = None):
        x, attention_mask = self.chunked(inputs, attention_mask)
        return (x.materialise() if isinstance(x, ChunkedInput) else x), attention_mask

    def chunked(self, inputs: Tensor, attention_mask: Tensor | None = None):
        """``forward``, with ``x`` as a ``ChunkedInput`` (the ids and the position table, embedded a
        chunk at a time inside a streamed cross-attention, never whole) unless running sums, which
        need all of it, make it a tensor. ``PerceiverIO`` calls this, not ``forward``: the recipe
        reads this adapter's weights later, inside the encoder, so hooks on the adapter do not see
        the embedding, and the adapter must not be sharded on its own (FSDP2 ``fully_shard``)."""
        check_tensor("inputs", inputs, 2, floating=False)
        length, limit = inputs.shape[1], self.config.max_seq_len
        if length > limit:
            raise ValueError(f"inputs: expected at most max_seq_len={limit} tokens, got {length}")
        if inputs.numel() and (int(inputs.min()) < 0 or int(inputs.max()) >= self.config.vocab_size):
            raise ValueError(f"inputs: expected token ids in [0, {self.config.vocab_size}), got "
                             f"[{int(inputs.min())}, {int(inputs.max())}]")
        weight = self.embedding.weight
        tensors, params = [inputs.long(), self._positions(length)], [weight]
        if self.depth is not None:
            depth, attention_mask = self.depth(inputs, attention_mask)
            tensors.append(depth)
            params.append(self.depth.embedding.weight)
        x = ChunkedInput(tuple(tensors), self._embed, tuple(params),
                         torch.Size((*inputs.shape, weight.shape[1])), weight.dtype)
        if self.running_sums is not None:
            return self.running_sums(x.materialise()), attention_mask
        return x, attention_mask

    def embed(self, inputs: Tensor) -> Tensor:
        """Token embeddings plus positions ``[B, L, dim]``, before any depth or running sums (ids
        unchecked)."""
        return self._embed(inputs.long(), self._positions(inputs.shape[1]))

    def _positions(self, length: int) -> Tensor:
        """The first ``length`` positions ``[1, length, dim]``."""
        return self.positions.first(length).unsqueeze(0)

    def _embed(self, ids: Tensor, positions: Tensor, depth: Tensor | None = None) -> Tensor:
        """``ids [B, c]``, ``positions [1, c, dim]`` and depth levels ``[B, c]`` -> ``[B, c, dim]``."""
        # positions of x's rank: for one example the backward pass hands x's gradient to them as it
        # is (a broadcast over the batch would copy it). Not in place: hooks on the embedding module
        # (full backward hooks) return views that must not be modified
        x = self.embedding(ids) + positions
        return x if depth is None else x + self.depth.embedding(depth)
