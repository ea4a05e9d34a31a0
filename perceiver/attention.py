"""Multi-head attention for both cross- and self-attention, on PyTorch's fused SDPA kernels
(on CPU, attentions under bf16 autocast and those whose values are not as wide as their keys run
as explicit matmuls in slices, which is faster there: ``perceiver.sliced_attention``; a
cross-attention with few heads over narrow inputs may absorb its key and value projections into
the queries: ``perceiver.absorbed_attention``; many narrow queries over few keys may fold the query
and output projections into the keys and values: ``perceiver.folded_attention``).

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

from perceiver import absorbed_attention as absorbed
from perceiver.folded_attention import folded_attention, folding_pays
from perceiver.padded_input import PaddedInput
from perceiver.sliced_attention import explicit_attention, explicit_attention_in_slices, explicit_pays
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
    if attention_mask.dtype != torch.bool:  # integers and floats alike: only 0 and 1 have a meaning
        bad = (attention_mask != 0) & (attention_mask != 1)
        if bool(bad.any()):
            first = attention_mask[bad][0].item()
            raise ValueError(f"attention_mask: expected values 0 (pad) or 1 (keep) or booleans, got "
                             f"{int(bad.sum())} other value(s), first {first!r}")
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
        return self._attend(x_q, self.k_proj(x_kv), self.v_proj(x_kv), attention_mask, return_weights)

    def forward_padded(self, x_q: Tensor, x_kv: PaddedInput, kv_norm: nn.LayerNorm,
                       attention_mask: Tensor | None = None) -> Tensor:
        """``forward(x_q, kv_norm(x_kv.materialise()), attention_mask)`` without the padded rows.
        Where that takes at most half the multiply-adds (``absorbed_attention.absorbed_pays``)
        and there is no mask and no attention dropout, the key and value projections are absorbed
        into the queries, which attend to the normalised groups themselves
        (``perceiver.absorbed_attention``, in float32 even under autocast, which on CPU is faster
        still; not under autocast elsewhere, where bf16 flash kernels may be faster). Otherwise the
        keys and values are projected from the groups (``PaddedInput.normalised_projections``)."""
        if self.absorbs(x_q, x_kv, attention_mask):
            return self.forward_absorbed(x_q, x_kv, kv_norm)
        k, v = x_kv.normalised_projections(kv_norm, self.k_proj, self.v_proj)
        return self._attend(x_q, k, v, attention_mask)

    def forward_absorbed(self, x_q: Tensor, x_kv: PaddedInput, kv_norm: nn.LayerNorm) -> Tensor:
        """``forward(x_q, kv_norm(x_kv.materialise()))`` with the key and value projections
        absorbed into the queries (``perceiver.absorbed_attention``; no mask, no dropout)."""
        q = self._heads(self.q_proj(x_q))
        return self._output(absorbed.absorbed_attention(q, x_kv, kv_norm, self.k_proj, self.v_proj), None)

    def absorbs(self, x_q: Tensor, x_kv: PaddedInput, attention_mask: Tensor | None = None) -> bool:
        """Whether ``forward_padded`` absorbs the projections for these arrays (see there)."""
        device = x_q.device.type
        return self._plain_softmax(attention_mask) \
            and (device == "cpu" or not torch.is_autocast_enabled(device)) \
            and absorbed.absorbed_pays(x_kv, x_q.shape[1], self.num_heads, self.q_proj.out_features,
                                       self.v_proj.out_features)

    def forward_absorbed_sdpa(self, x_q: Tensor, x_kv: Tensor) -> Tensor:
        """``forward(x_q, x_kv)`` with the key and value projections absorbed into the queries and
        the output, attending in the fused kernel to ``x_kv`` itself (``absorbed_attention.
        absorbed_sdpa``; no mask, no dropout)."""
        q = self._heads(self.q_proj(x_q))
        return self._output(absorbed.absorbed_sdpa(q, x_kv, self.k_proj, self.v_proj), None)

    def absorbs_into_sdpa(self, x_q: Tensor, x_kv: Tensor, attention_mask: Tensor | None = None) -> bool:
        """Whether ``forward_absorbed_sdpa`` pays for these arrays (``absorbed_sdpa_pays``; no mask,
        no attention dropout)."""
        return self._plain_softmax(attention_mask) \
            and absorbed.absorbed_sdpa_pays(x_q.shape[1], x_kv.shape[1], x_kv.shape[-1], self.num_heads,
                                            self.q_proj.out_features, self.v_proj.out_features)

    def forward_folded(self, x_q: Tensor, q_norm: nn.LayerNorm, x_kv: Tensor) -> Tensor:
        """``forward(q_norm(x_q), x_kv)`` with the query and output projections folded into the keys
        and values (``perceiver.folded_attention``; no mask, no dropout): ``x_q`` are the queries
        before their norm, ``[B or 1, N, q_dim]``."""
        k, v = self._heads(self.k_proj(x_kv)), self._heads(self.v_proj(x_kv))
        return folded_attention(x_q, q_norm, k, v, self.q_proj, self.o_proj)

    def folds(self, x_q: Tensor, x_kv: Tensor, attention_mask: Tensor | None = None) -> bool:
        """Whether ``forward_folded`` pays for these arrays: no mask, no attention dropout, value
        heads as wide as the query heads (the fused kernel's condition on ``C`` and ``C_out``) and
        at most half the multiply-adds (``folded_attention.folding_pays``)."""
        return self._plain_softmax(attention_mask) \
            and self.q_proj.in_features == self.o_proj.out_features \
            and folding_pays(x_kv.shape[0], x_q.shape[1], x_kv.shape[1], self.q_proj.in_features,
                             self.num_heads, self.q_proj.out_features, self.v_proj.out_features,
                             self.o_proj.out_features)

    def _plain_softmax(self, attention_mask: Tensor | None) -> bool:
        """No mask and no attention dropout: what the absorbed and folded forms need."""
        return attention_mask is None and not (self.training and self.dropout > 0)

    def _attend(self, x_q: Tensor, k: Tensor, v: Tensor, attention_mask: Tensor | None,
                return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Attention from ``x_q`` to the projected keys ``k [B, M, qk_dim]`` and values
        ``v [B, M, v_dim]``."""
        mask, empty, bias = self._mask(attention_mask, k)
        q = self._queries(x_q, k)
        k, v = self._heads(k), self._heads(v)
        sdpa_mask = None if mask is None else rearrange(mask, "b m -> b 1 1 m")
        if bias is not None:  # one additive mask: the bias, -inf on dropped keys
            sdpa_mask = rearrange(bias, "b h m -> b h 1 m").to(q.dtype).masked_fill(~sdpa_mask, float("-inf"))

        dropout_p = self.dropout if self.training else 0.0
        if return_weights:
            out, weights = explicit_attention(q, k, v, sdpa_mask, dropout_p)
            if empty is not None:
                weights = weights.masked_fill(rearrange(empty, "b -> b 1 1 1"), 0.0)
        elif explicit_pays(q, k, v, sdpa_mask):
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
