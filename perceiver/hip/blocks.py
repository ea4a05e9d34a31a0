"""One HiP block: regroup, per-group latents (plus a U-Net skip), group-local cross-attention and
self-attention, all groups at once (folded into the batch for the fused attention kernels).

    [B, G', N', C_in] --regroup--> [B, G, G'N'/G, C_in] --latents attend--> [B, G, N, C]

Cross-attention projects q, k and v to the input width ``C_in`` (one head, MLP widening 1, query
residual); self-attention uses width ``C`` (MLP widening 4); every MLP is squared-ReLU, as in
DeepMind's HiP. A block may train on a random subset of ``num_latents_train`` of its latents
(per example and group) or evaluate on ``num_latents_eval`` > N latents: the table always holds
the evaluation count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from perceiver.layers import CrossAttentionLayer, SelfAttentionStack, checkpointed


@dataclass
class BlockConfig:
    num_groups: int
    num_latents: int
    channels: int
    num_self_layers: int
    num_self_heads: int
    num_latents_train: int | None = None  # subsample the latents in training
    num_latents_eval: int | None = None  # supersample them in evaluation

    def __post_init__(self):
        if self.num_latents_train is not None and self.num_latents_eval is not None:
            raise ValueError("num_latents_train, num_latents_eval: expected at most one of them, got both")
        if self.channels % self.num_self_heads:
            raise ValueError(f"channels: expected a multiple of num_self_heads={self.num_self_heads}, "
                             f"got {self.channels}")

    @property
    def latents_eval(self) -> int:
        return self.num_latents_eval or self.num_latents

    @property
    def latents_train(self) -> int:
        return self.num_latents_train or self.num_latents


def regroup(x: Tensor, num_groups: int, transpose: bool = False) -> Tensor:
    """``[B, G', N', C] -> [B, G, G'N'/G, C]`` in row-major order (``transpose``: swap G' and N'
    first, so that each new group draws from every old group)."""
    if transpose:
        x = x.transpose(1, 2)
    tokens = x.shape[1] * x.shape[2]
    if tokens % num_groups:
        raise ValueError(f"num_groups: expected a divisor of the {tokens} tokens entering the block "
                         f"({x.shape[1]} x {x.shape[2]}), got {num_groups}")
    return x.reshape(x.shape[0], num_groups, tokens // num_groups, x.shape[-1])


class HiPBlock(nn.Module):
    def __init__(self, config: BlockConfig, in_channels: int, skip_channels: int | None = None,
                 transpose: bool = False, dropout: float = 0.0, drop_path: float = 0.0,
                 checkpointing: bool = False):
        super().__init__()
        if config.latents_eval < config.latents_train:
            raise ValueError(f"num_latents_eval: expected at least the {config.latents_train} training "
                             f"latents, got {config.latents_eval}")
        self.config, self.transpose = config, transpose
        g, n, c = config.num_groups, config.latents_eval, config.channels
        self.latents = nn.Parameter(torch.empty(g * n, c))
        self.skip_projection = None
        if skip_channels is not None and skip_channels != c:
            self.skip_projection = nn.Linear(skip_channels, c)
        self.cross_attention = CrossAttentionLayer(c, in_channels, 1, qk_dim=in_channels, v_dim=in_channels,
                                                   widening_factor=1, activation="relu2")
        self.checkpointing = checkpointing  # of the cross-attention; the stack has its own
        self.self_attention = SelfAttentionStack(
            config.num_self_layers, c, checkpointing, num_heads=config.num_self_heads, widening_factor=4,
            activation="relu2", residual_dropout=dropout, drop_path=drop_path)

    def queries(self, batch: int) -> Tensor:
        """The latent queries ``[B, G, N, C]``: all of them (eval), or a random subset per example
        and group (training with ``num_latents_train``)."""
        table = rearrange(self.latents, "(g n) c -> g n c", g=self.config.num_groups)
        if not self.training or self.config.latents_train == table.shape[1]:
            return table.expand(batch, -1, -1, -1)
        scores = torch.rand(batch, table.shape[0], table.shape[1], device=table.device)
        chosen = scores.argsort(-1)[..., :self.config.latents_train]  # [B, G, N_train]
        groups = torch.arange(table.shape[0], device=table.device)[None, :, None]
        return table[groups, chosen]

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """``x [B, G', N', C_in]`` (and ``skip [B, G, N, C_skip]``) -> ``[B, G, N, C]``."""
        x = regroup(x, self.config.num_groups, self.transpose)
        q = self.queries(x.shape[0]).to(x.dtype)
        if skip is not None:
            if skip.shape[1:3] != q.shape[1:3]:
                raise ValueError(f"skip: expected [B, {q.shape[1]}, {q.shape[2]}, C] to add to the latent "
                                 f"queries, got {list(skip.shape)}")
            q = q + (skip if self.skip_projection is None else self.skip_projection(skip))
        z = checkpointed(self.cross_attention, rearrange(q, "b g n c -> (b g) n c"),
                         rearrange(x, "b g m c -> (b g) m c"), enabled=self.checkpointing)
        z = self.self_attention(z)
        return rearrange(z, "(b g) n c -> b g n c", b=x.shape[0])
