"""Cross-attention with the query and output projections folded into the keys and values: many
narrow queries over few keys (HiP's reconstruction head: a million 32-wide position queries over
128 latents per group, projected to 128 channels) attend in their own normalised channels, and the
values come out already projected to the output width.

For queries ``x = LN(x_q) = g * xh + beta`` (``xh`` the normalised rows, each summing to 0),
``q = W_q x + b_q`` split into heads of width ``d``, keys ``k_m``, values ``v_m`` and the output
``W_o [attended heads] + b_o``, per head ``h``:

    s q_h.k_m = xh.(g * K_m) + c_m           K_m = s W_q,h^T k_m [C],   c_m = beta.K_m + s b_q,h.k_m
    W_o,h sum_m A_m v_m = sum_m A_m V_m      V_m = W_o,h v_m [C_out]

Because every ``xh`` sums to 0, the key bias ``c_m`` rides on the keys' mean: the queries
``xh + 1`` (one added to every channel) against the keys ``g * K_m - mean(g * K_m) + c_m / C``
give exactly ``xh.(g * K_m) + c_m``. So each head is one fused attention (SDPA) over ``C`` query
channels and ``C_out`` value channels, instead of ``d``-wide ones after two projections of every
query row: in HiP-16's head, 2 x 32 instead of 128 + 128 + 2 x 32 x 128 multiply-adds per query and
key. The result is the projected attention's up to rounding, with gradients for every parameter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

# Smaller attentions keep the projections: absorbed_attention's floor, where small attentions'
# extra ops were measured to cost more than they save. The fold itself was measured on HiP-16's
# head, 2.7G projected multiply-adds at 64k elements and up (benchmarks: docs/benchmarks.md).
MIN_PROJECTED_MACS = 2**29


def folding_pays(batch: int, num_queries: int, num_keys: int, q_dim: int, num_heads: int, qk_dim: int,
                 v_dim: int, out_dim: int) -> bool:
    """Whether folding takes at most half the multiply-adds of projecting: per example, per query
    ``H M (C + C_out)`` plus per key ``qk C + v C_out``, against the projected queries and output
    ``N (C qk + v C_out)`` and the attention ``N M (qk + v)``; and only for at least
    ``MIN_PROJECTED_MACS`` of the latter in all."""
    folded = num_heads * num_queries * num_keys * (q_dim + out_dim)
    folded += num_keys * (qk_dim * q_dim + v_dim * out_dim)
    projected = num_queries * (q_dim * qk_dim + v_dim * out_dim + num_keys * (qk_dim + v_dim))
    return 2 * folded <= projected and batch * projected >= MIN_PROJECTED_MACS


def folded_attention(x_q: Tensor, q_norm: nn.LayerNorm, k: Tensor, v: Tensor, q_proj: nn.Linear,
                     o_proj: nn.Linear) -> Tensor:
    """``o_proj(attention(q_proj(q_norm(x_q)), k, v))`` for un-normalised queries ``x_q [B or 1, N,
    C]`` (one row shared by the batch) and projected keys ``k [B, H, M, d]`` and values
    ``v [B, H, M, e]``, without projecting the queries or the attended values.
    Returns ``[B, N, C_out]``."""
    heads, width = k.shape[1], x_q.shape[-1]
    if tuple(q_norm.normalized_shape) != (width,):
        raise ValueError(f"q_norm: expected a LayerNorm over {width} channels, "
                         f"got one over {tuple(q_norm.normalized_shape)}")
    g = q_norm.weight if q_norm.weight is not None else x_q.new_ones(width)
    beta = q_norm.bias if q_norm.bias is not None else x_q.new_zeros(width)
    w_q = rearrange(q_proj.weight, "(h d) c -> h d c", h=heads)
    k = k * k.shape[-1] ** -0.5
    keys = torch.einsum("bhmd,hdc->bhmc", k, w_q.to(k.dtype))  # s W_q^T k
    bias = keys @ beta.to(keys.dtype)
    if q_proj.bias is not None:
        b_q = rearrange(q_proj.bias, "(h d) -> h d", h=heads)
        bias = bias + torch.einsum("bhmd,hd->bhm", k, b_q.to(k.dtype))  # s b_q.k
    keys = keys * g.to(keys.dtype)
    keys = keys - keys.mean(-1, keepdim=True) + (bias / width)[..., None]
    w_o = rearrange(o_proj.weight, "o (h e) -> h o e", h=heads)
    values = torch.einsum("bhme,hoe->bhmo", v, w_o.to(v.dtype))  # W_o,h v
    queries = F.layer_norm(x_q, (width,), None, x_q.new_ones(width), q_norm.eps)  # xh + 1
    queries = queries[:, None].expand(k.shape[0], heads, -1, -1).to(keys.dtype)
    out = F.scaled_dot_product_attention(queries, keys, values, scale=1.0).sum(1)
    return out if o_proj.bias is None else out + o_proj.bias.to(out.dtype)
