"""Pre-LayerNorm residual blocks: cross-attention layer, self-attention layer, self-attention stack.

Every layer is ``x = x + attention(norm(x)); x = x + mlp(norm(x))`` (the cross-attention's query
residual is optional, as in Perceiver IO decoders whose queries and outputs mean different things).
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from perceiver.attention import MultiHeadAttention
from perceiver.padded_input import PaddedInput
from perceiver.recomputed_chunks import recomputed_chunks
from perceiver.streamed_attention import ChunkedInput


class SquaredReLU(nn.Module):
    """``relu(x) ** 2`` (the MLP activation of DeepMind's HiP)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x).square()


ACTIVATIONS = {"gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "relu2": SquaredReLU}


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Zero whole examples of a residual branch ``[B, ...]`` with probability ``rate`` in training,
    without rescaling the kept ones (HiP's stochastic depth)."""
    if not training or rate == 0.0:
        return x
    keep = torch.floor(1.0 - rate + torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device))
    return x * keep.to(x.dtype)


def check_activation(name: str) -> None:
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {name!r}")


class MLP(nn.Module):
    """Two-layer feed-forward block ``[.., dim] -> [.., widening_factor * dim] -> [.., dim]``.

    ``activation="gelu"`` is exact GELU (transformers' Perceiver); ``"gelu_tanh"`` is the tanh
    approximation (the default of DeepMind's JAX/Haiku code); ``"relu2"`` is squared ReLU (HiP).
    """

    def __init__(self, dim: int, widening_factor: int = 1, activation: str = "gelu", dropout=0.0):
        super().__init__()
        check_activation(activation)
        self.fc1 = nn.Linear(dim, widening_factor * dim)
        self.act = ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(widening_factor * dim, dim)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(self.fc2(self.act(self.fc1(x))), self.dropout, self.training)


class CrossAttentionLayer(nn.Module):
    """Queries ``[B, N, q_dim]`` attend to a key/value array ``[B, M, kv_dim]``; output ``[B, N, q_dim]``.

    LayerNorm on the queries and on the key/value array, attention (output width ``q_dim``),
    optional residual to the un-normalised queries, then a residual MLP. With ``chunk_size`` a
    key/value array longer than that is normalised, projected and attended to in chunks
    (``MultiHeadAttention.forward_streamed``): the same output in memory O(chunk) instead of O(M).
    The key/value array may be a ``ChunkedInput``, computed a chunk at a time when streamed
    (computed whole otherwise), or a ``PaddedInput``, projected group by group. Where it takes at
    most half the FLOPs (few heads, narrow inputs: DeepMind's image and multimodal encoders), the
    key and value projections are absorbed into the queries instead (``perceiver.absorbed_attention``;
    through the fused kernel for a plain input no wider than a head, as in HiP's encoder blocks);
    where many narrow queries attend to few keys (HiP's head), the query and output projections are
    folded into the keys and values (``perceiver.folded_attention``).
    """

    def __init__(
        self,
        q_dim: int,
        kv_dim: int,
        num_heads: int = 1,
        qk_dim: int | None = None,
        v_dim: int | None = None,
        widening_factor: int = 1,
        query_residual: bool = True,
        dropout: float = 0.0,
        activation: str = "gelu",
        chunk_size: int | None = None,
    ):
        super().__init__()
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size: expected a positive integer or None, got {chunk_size}")
        self.chunk_size = chunk_size
        self.q_norm = nn.LayerNorm(q_dim)
        self.kv_norm = nn.LayerNorm(kv_dim)
        self.attention = MultiHeadAttention(
            q_dim, kv_dim, num_heads, qk_dim, v_dim, out_dim=q_dim, dropout=dropout
        )
        self.query_residual = query_residual
        self.mlp_norm = nn.LayerNorm(q_dim)
        self.mlp = MLP(q_dim, widening_factor, activation, dropout)

    def forward(
        self,
        x_q: Tensor,
        x_kv: Tensor | ChunkedInput | PaddedInput,
        attention_mask: Tensor | None = None,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        # queries every example shares (an expanded [N, q_dim] array: learned latents or output
        # queries) are normalised and projected once, not once per example
        shared = x_q.shape[0] > 1 and x_q.stride(0) == 0
        attended = self._attend(x_q[:1] if shared else x_q, x_kv, attention_mask, return_weights)
        attended, weights = attended if return_weights else (attended, None)
        x = attended + x_q if self.query_residual else attended
        x = x + self.mlp(self.mlp_norm(x))
        return (x, weights) if return_weights else x

    def _attend(self, x_q: Tensor, x_kv: Tensor | ChunkedInput | PaddedInput,
                attention_mask: Tensor | None, return_weights: bool) -> Tensor | tuple[Tensor, Tensor]:
        """The attention's output for the un-normalised queries ``x_q``, by the path that fits."""
        streams = self.streams(x_kv.shape[1]) and not return_weights
        if isinstance(x_kv, PaddedInput) and (streams or return_weights) \
                or isinstance(x_kv, ChunkedInput) and not streams:
            x_kv = x_kv.materialise()
        if streams:
            return self.attention.forward_streamed(self.q_norm(x_q), x_kv, self.kv_norm, attention_mask,
                                                   self.chunk_size)
        if isinstance(x_kv, PaddedInput):
            return self.attention.forward_padded(self.q_norm(x_q), x_kv, self.kv_norm, attention_mask)
        if not return_weights and self.attention.folds(x_q, x_kv, attention_mask):
            return self.attention.forward_folded(x_q, self.q_norm, self.kv_norm(x_kv))
        q = self.q_norm(x_q)
        if not return_weights and self.attention.absorbs(q, whole := PaddedInput.whole(x_kv), attention_mask):
            return self.attention.forward_absorbed(q, whole, self.kv_norm)
        x_kv = self.kv_norm(x_kv)
        if not return_weights and self.attention.absorbs_into_sdpa(q, x_kv, attention_mask):
            return self.attention.forward_absorbed_sdpa(q, x_kv)
        return self.attention(q, x_kv, attention_mask, return_weights=return_weights)

    def streams(self, length: int) -> bool:
        """Whether a key/value array of ``length`` elements goes through in chunks (longer than
        ``chunk_size``, and not while training with attention dropout, which streaming lacks)."""
        dropout = self.training and self.attention.dropout > 0
        return self.chunk_size is not None and length > self.chunk_size and not dropout


class SelfAttentionLayer(nn.Module):
    """Self-attention over latents ``[B, N, dim] -> [B, N, dim]`` with residual attention and MLP.

    ``dropout`` acts on the attention weights and the MLP output (Perceiver IO); HiP instead drops
    the attention and MLP outputs (``residual_dropout``) and whole examples of each residual
    branch (``drop_path``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qk_dim: int | None = None,
        v_dim: int | None = None,
        widening_factor: int = 1,
        dropout: float = 0.0,
        activation: str = "gelu",
        residual_dropout: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.residual_dropout, self.drop_path = residual_dropout, drop_path
        self.norm = nn.LayerNorm(dim)
        self.attention = MultiHeadAttention(
            dim, dim, num_heads, qk_dim, v_dim, out_dim=dim, dropout=dropout
        )
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = MLP(dim, widening_factor, activation, dropout)

    def forward(self, x: Tensor, return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        h = self.norm(x)
        attended = self.attention(h, h, return_weights=return_weights)
        attended, weights = attended if return_weights else (attended, None)
        x = x + self._branch(attended)
        x = x + self._branch(self.mlp(self.mlp_norm(x)))
        return (x, weights) if return_weights else x

    def _branch(self, y: Tensor) -> Tensor:
        y = F.dropout(y, self.residual_dropout, self.training)
        return drop_path(y, self.drop_path, self.training)


class SelfAttentionStack(nn.Module):
    """``num_layers`` self-attention layers ``[B, N, dim] -> [B, N, dim]``.

    With ``checkpointing=True`` each layer's activations are recomputed in the backward pass
    (less memory, about one extra forward of time); the gradients are the same.
    """

    def __init__(self, num_layers: int, dim: int, checkpointing: bool = False, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(SelfAttentionLayer(dim, **layer_kwargs) for _ in range(num_layers))
        self.checkpointing = checkpointing

    def forward(self, x: Tensor, return_weights: bool = False) -> Tensor | tuple[Tensor, list]:
        all_weights = []
        for layer in self.layers:
            if return_weights:
                x, weights = layer(x, return_weights=True)
                all_weights.append(weights)
            else:
                x = checkpointed(layer, x, enabled=self.checkpointing)
        return (x, all_weights) if return_weights else x


def checkpointed(module: nn.Module, *args, enabled: bool):
    """``module(*args)``; with ``enabled``, in a training step with gradients, checkpointed: only
    ``args`` are kept for the backward pass, which recomputes the rest (the same gradients)."""
    if enabled and module.training and torch.is_grad_enabled():
        return checkpoint(module, *args, use_reentrant=False)
    return module(*args)


def attend_in_chunks(layer: CrossAttentionLayer, queries: Tensor, x_kv: Tensor, chunk_size: int | None,
                     checkpointing: bool) -> Tensor:
    """``layer(queries, x_kv)`` for at most ``chunk_size`` queries ``[B, O, q_dim]`` at a time (the
    same outputs). With ``checkpointing``, a training step keeps only ``queries`` and ``x_kv``. The
    backward pass then recomputes each chunk, one at a time (``perceiver.recomputed_chunks``).
    A single chunk is not checkpointed: recomputed right after its forward pass, it would save
    nothing. A layer sharded by FSDP2 is checkpointed chunk by chunk through
    ``torch.utils.checkpoint``, so that its hooks see each chunk's call."""
    if chunk_size is None or queries.shape[1] <= chunk_size:
        return layer(queries, x_kv)
    if checkpointing and layer.training and torch.is_grad_enabled() and not _sharded(layer):
        return recomputed_chunks(layer, queries, x_kv, chunk_size)
    return torch.cat([checkpointed(layer, part, x_kv, enabled=checkpointing)
                      for part in queries.split(chunk_size, dim=1)], dim=1)


def _sharded(module: nn.Module) -> bool:
    fsdp = sys.modules.get("torch.distributed.fsdp")  # imported by whoever sharded it
    return fsdp is not None and isinstance(module, fsdp.FSDPModule)


def set_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Activation checkpointing on or off in every part of ``model`` that has a ``checkpointing``
    switch: self-attention stacks (each layer), encoders' and HiP blocks' cross-attentions, and
    decoders and HiP heads that decode in chunks (each chunk; a model's last layer run whole would
    be recomputed right after its forward pass, saving nothing, so it is not checkpointed)."""
    for module in model.modules():
        if isinstance(getattr(module, "checkpointing", None), bool):
            module.checkpointing = enabled
