"""Multi-head attention for both cross- and self-attention, on PyTorch's fused SDPA kernels
(attentions under bf16 autocast on CPU run as explicit matmuls in slices, which is faster there).

Shapes: queries come from an array ``[B, N, q_dim]``, keys and values from ``[B, M, kv_dim]``.
Queries and keys are projected to ``qk_dim``, values to ``v_dim`` (each split over ``num_heads``),
and the attended values are projected to ``out_dim``. One module serves the encoder's
cross-attention (latents attend to the input), the latent self-attention (``kv = q``) and the
decoder's cross-attention (output queries attend to the latents).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from perceiver.streamed_attention import ChunkedInput, streamed_attention


def check_attention_mask(attention_mask: Tensor | None, batch: int, length: int) -> Tensor | None:
    """Validate a key-padding mask ``[B, M]`` (1/True keep, 0/False pad) and return it as bool."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, Tensor):
        raise ValueError(
            f"attention_mask: expected a tensor of shape [{batch}, {length}], "
            f"got {type(attention_mask).__name__}"
        )
    if tuple(attention_mask.shape) != (batch, length):
        raise ValueError(
            f"attention_mask: expected shape [{batch}, {length}] (batch, input length), "
            f"got {list(attention_mask.shape)}"
        )
    if attention_mask.dtype.is_floating_point or attention_mask.dtype.is_complex:
        bad = (attention_mask != 0) & (attention_mask != 1)
        if bool(bad.any()):
            raise ValueError("attention_mask: expected values 0 (pad) or 1 (keep), got other values")
    return attention_mask.bool()


def split_key_bias(attention_mask: Tensor, batch: int, heads: int, length: int) -> tuple[Tensor, Tensor]:
    """An additive key bias ``[B, H or 1, M]`` (float; ``-inf`` drops a key, in every head alike)
    -> (keep-mask ``[B, M]``, finite bias ``[B, H or 1, M]`` with 0 where keys are dropped)."""
    if not attention_mask.dtype.is_floating_point:
        raise ValueError(f"attention_mask: expected a floating-point key bias [B, H, M], "
                         f"got {attention_mask.dtype}")
    if attention_mask.shape[0] != batch or attention_mask.shape[1] not in (1, heads) \
            or attention_mask.shape[2] != length:
        raise ValueError(f"attention_mask: expected a key bias of shape [{batch}, {heads} or 1, {length}] "
                         f"(batch, heads, input length), got {list(attention_mask.shape)}")
    if bool(torch.isnan(attention_mask).any() | (attention_mask == float("inf")).any()):
        raise ValueError("attention_mask: expected finite key biases or -inf, got NaN or +inf")
    dropped = attention_mask == float("-inf")
    keep = ~dropped[:, 0]
    if bool((dropped != ~keep[:, None]).any()):
        raise ValueError("attention_mask: expected -inf on the same keys in every head")
    return keep, attention_mask.masked_fill(dropped, 0.0)


# Under bf16 autocast on CPU, PyTorch's flash kernel is no faster than in fp32. Attention there runs
# instead as two bf16 matmuls and a softmax, over slices of the batch and heads of at most
# EXPLICIT_BF16_SLICE_SCORES scores each (batch x heads x queries x keys), small enough to stay in
# cache. Config A's bf16 step (benchmarks/run.py) took 0.78 s this way against 0.85 s with only
# its self-attentions explicit and whole (medians of 14 alternated steps in one process); its
# cross-attentions alone (256 x 2048 and 2048 x 256 scores per head, 8 heads, batch 4) took 77 and
# 60 ms against the flash kernel's 104 and 94 ms. Attentions of more than EXPLICIT_BF16_MAX_SCORES
# scores keep the fused kernel: explicit attention keeps its weights for the backward pass (6
# bytes a score), where the fused kernel keeps none. fp32 keeps the fused kernel always: explicit
# attention, whole or sliced, was slower there (enc 142 vs 125 ms, dec 124 vs 99 ms).
EXPLICIT_BF16_SLICE_SCORES = 2**22
EXPLICIT_BF16_MAX_SCORES = 2**24


def explicit_pays(q: Tensor, k: Tensor) -> bool:
    """Whether ``q [B, H, N, d]`` attending to ``k [B, H, M, d]`` runs faster as explicit matmuls."""
    if q.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return False
    if torch.get_autocast_dtype("cpu") != torch.bfloat16:
        return False
    return q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] <= EXPLICIT_BF16_MAX_SCORES


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                       dropout_p: float = 0.0) -> tuple[Tensor, Tensor]:
    """Softmax attention as matmuls: ``q [B, H, N, d]``, ``k [B, H, M, d]``, ``v [B, H, M, dv]``
    and ``mask`` (None, a bool keep-mask or an additive float mask, broadcast to ``[B, H, N, M]``)
    -> (output ``[B, H, N, dv]``, weights ``[B, H, N, M]``)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask
    weights = scores.softmax(dim=-1)
    return torch.matmul(F.dropout(weights, dropout_p), v), weights


def explicit_attention_in_slices(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                                 dropout_p: float = 0.0, max_scores: int | None = None) -> Tensor:
    """``explicit_attention``'s output, computed over slices of the batch and heads of at most
    ``max_scores`` scores each (default ``EXPLICIT_BF16_SLICE_SCORES``; one head of one example
    where even that is more)."""
    max_scores = EXPLICIT_BF16_SLICE_SCORES if max_scores is None else max_scores
    batch, heads, pair = q.shape[0], q.shape[1], q.shape[2] * k.shape[2]
    per_slice = max(1, max_scores // pair)  # (example, head) pairs in one slice
    examples, head_step = max(1, per_slice // heads), min(heads, per_slice)

    def attend(b: slice, h: slice) -> Tensor:
        m = None if mask is None else mask[b, h if mask.shape[1] > 1 else slice(None)]
        return explicit_attention(q[b, h], k[b, h], v[b, h], m, dropout_p)[0]

    def cat(parts: list[Tensor], dim: int) -> Tensor:  # one part needs no copy
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim)

    rows = [cat([attend(slice(i, i + examples), slice(j, j + head_step))
                 for j in range(0, heads, head_step)], 1) for i in range(0, batch, examples)]
    return cat(rows, 0)


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention with independent widths.

    Args:
        q_dim: channels of the query array.
        kv_dim: channels of the key/value array.
        num_heads: number of heads; must divide ``qk_dim`` and ``v_dim``.
        qk_dim: channels of the projected queries and keys (default ``q_dim``).
        v_dim: channels of the projected values (default ``qk_dim``).
        out_dim: channels of the output (default ``q_dim``).
        dropout: dropout on the attention weights during training.
    """

    def __init__(
        self,
        q_dim: int,
        kv_dim: int,
        num_heads: int = 1,
        qk_dim: int | None = None,
        v_dim: int | None = None,
        out_dim: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        qk_dim = q_dim if qk_dim is None else qk_dim
        v_dim = qk_dim if v_dim is None else v_dim
        out_dim = q_dim if out_dim is None else out_dim
        for name, width in (("qk_dim", qk_dim), ("v_dim", v_dim)):
            if width % num_heads != 0:
                raise ValueError(f"{name}: expected a multiple of num_heads={num_heads}, got {width}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(q_dim, qk_dim)
        self.k_proj = nn.Linear(kv_dim, qk_dim)
        self.v_proj = nn.Linear(kv_dim, v_dim)
        self.o_proj = nn.Linear(v_dim, out_dim)

    def forward(
        self,
        x_q: Tensor,
        x_kv: Tensor,
        attention_mask: Tensor | None = None,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend from ``x_q [B, N, q_dim]`` to ``x_kv [B, M, kv_dim]``.

        ``attention_mask [B, M]`` marks keys to keep (1/True) or ignore (0/False); a float
        ``attention_mask [B, H or 1, M]`` is instead a key bias added to every query's scores in
        each head (``-inf`` drops a key), e.g. ``TokenInputAdapter``'s nesting-depth bias. Query
        rows of an example whose keys are all masked output zeros (no NaN in the forward or
        backward pass).
        Returns ``[B, N, out_dim]``, and with ``return_weights`` also the attention weights
        ``[B, heads, N, M]`` (computed explicitly: use it for inspection, not for speed).
        """
        mask, empty, bias = self._mask(attention_mask, x_kv)
        q = self._queries(x_q, x_kv)
        k, v = self._heads(self.k_proj(x_kv)), self._heads(self.v_proj(x_kv))
        sdpa_mask = None if mask is None else rearrange(mask, "b m -> b 1 1 m")
        if bias is not None:  # one additive mask: the bias, -inf on dropped keys
            sdpa_mask = rearrange(bias, "b h m -> b h 1 m").to(q.dtype).masked_fill(~sdpa_mask, float("-inf"))

        dropout_p = self.dropout if self.training else 0.0
        if return_weights:
            out, weights = explicit_attention(q, k, v, sdpa_mask, dropout_p)
            if empty is not None:
                weights = weights.masked_fill(rearrange(empty, "b -> b 1 1 1"), 0.0)
        elif explicit_pays(q, k):
            out = explicit_attention_in_slices(q, k, v, sdpa_mask, dropout_p)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask, dropout_p=dropout_p)
        out = self._output(out, empty)
        return (out, weights) if return_weights else out

    def forward_streamed(self, x_q: Tensor, x_kv: Tensor | ChunkedInput, kv_norm: nn.LayerNorm,
                         attention_mask: Tensor | None, chunk_size: int) -> Tensor:
        """``forward(x_q, kv_norm(x_kv), attention_mask)`` with the keys and values computed
        ``chunk_size`` input elements at a time (``perceiver.streamed_attention``): the same result
        without ever holding the normalised input, keys or values of all ``M`` elements (nor the
        input itself, given as a ``ChunkedInput``)."""
        if self.training and self.dropout > 0:
            raise ValueError(f"dropout: streamed attention has no attention dropout, got {self.dropout}")
        mask, empty, bias = self._mask(attention_mask, x_kv)
        q = self._queries(x_q, x_kv)

        def key_values(x: Tensor) -> tuple[Tensor, Tensor]:
            x = kv_norm(x)
            return self._heads(self.k_proj(x)), self._heads(self.v_proj(x))

        params = [*kv_norm.parameters(), *self.k_proj.parameters(), *self.v_proj.parameters()]
        scale = q.shape[-1] ** -0.5
        out = streamed_attention(q, x_kv, key_values, params, mask, chunk_size, scale, bias=bias)
        return self._output(out, empty)

    def _queries(self, x_q: Tensor, x_kv: Tensor) -> Tensor:
        """Projected queries ``[B, H, N, d]``; one row of queries (``[1, N, q_dim]``) serves the
        whole batch of ``x_kv``."""
        q = self._heads(self.q_proj(x_q))
        return q.expand(x_kv.shape[0], -1, -1, -1) if q.shape[0] == 1 else q

    def _heads(self, x: Tensor) -> Tensor:
        return rearrange(x, "b m (h d) -> b h m d", h=self.num_heads)

    def _mask(self, attention_mask: Tensor | None, x_kv: Tensor):
        """(keep-mask ``[B, M]``, examples with no key ``[B]``, finite key bias ``[B, H or 1, M]``
        or None); an example with no key attends everywhere (finite values) and ``_output``
        zeroes its rows."""
        bias = None
        if isinstance(attention_mask, Tensor) and attention_mask.dim() == 3:
            mask, bias = split_key_bias(attention_mask, x_kv.shape[0], self.num_heads, x_kv.shape[1])
        else:
            mask = check_attention_mask(attention_mask, x_kv.shape[0], x_kv.shape[1])
        if mask is None:
            return None, None, None
        empty = ~mask.any(dim=1)
        return mask | empty[:, None], empty, bias

    def _output(self, out: Tensor, empty: Tensor | None) -> Tensor:
        out = self.o_proj(rearrange(out, "b h n d -> b n (h d)"))
        if empty is not None:
            out = out.masked_fill(rearrange(empty, "b -> b 1 1"), 0.0)
        return out
