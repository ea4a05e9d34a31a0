"""Cross-attention with the key and value projections absorbed: the queries are taken into the
input's channel space and attend to the normalised input rows themselves. The input is a
``PaddedInput`` (a multimodal adapter's row groups; a plain ``[B, M, C]`` array is one group).

For one head with queries ``q`` (width ``d``), keys ``k_m = W_k LN(x_m) + b_k`` and values
``v_m = W_v LN(x_m) + b_v``, where ``LN(x) = g * (x - mu) * rstd + b``:

    scale q.k_m = u.(x_m - mu_m) rstd_m + c          u = scale (q W_k) * g,  c = scale q.(W_k b + b_k)
    sum_m A_m v_m = (W_v * g) sum_m A_m rstd_m (x_m - mu_m) + (W_v b + b_v)    (the weights sum to 1)

A row ``x_m = [f_m | p]`` of group ``i`` (features ``C_i`` wide, the shared learned vector ``p``)
enters both through ``C_i + 4`` numbers (zero-padded to a multiple of 8, which the matmuls take
faster), ``z_m = [rstd (f_m - mu0), rstd, -rstd (mu - mu0), -rstd mu, 1]`` (``mu0`` the detached mean,
which keeps large means from cancelling), against the query's
``a = [u_f, u_p.p, sum(u_f), sum(u_p), c]``: scores are ``a . z_m``, and the weighted average of
the ``z_m`` gives back the weighted average of ``LN(x_m)``. The attention thus runs over ``C_i + 4``
channels instead of the keys' and values' widths, and no key or value is ever projected. In
DeepMind's Kinetics autoencoder (one head, 704-wide keys and values, 243 feature channels for the
50,176 video rows) that is a quarter of the encoder's cross-attention FLOPs. The result is that of
the projected attention, up to rounding; gradients reach every parameter as before (those of
``b_k`` and of the keys' share of ``b``, zero in exact arithmetic, come out as rounding).

The softmax runs jointly over all groups, as explicit matmuls over slices of the query rows with a
hand-written backward pass. A training step keeps the slices' weights for it where they take at
most ``KEEP_WEIGHTS_BYTES`` in all; otherwise the backward pass recomputes each slice's weights
(then, like the flash kernel, nothing of size queries x keys is kept).

A plain input whose normalised rows ``LN(x)`` are no wider than the keys and values of a head
(HiP's first block: 128 latents per group over a million 32-wide tokens, projected to 32) takes a
simpler form, ``absorbed_sdpa``: the queries ``s W_k^T q`` attend in the fused kernel to the
normalised rows as keys and values (the query's ``q.b_k``, the same for every key, leaves the
softmax unchanged), and ``W_v`` and ``b_v`` apply to the weighted average. No key or value is
projected, for as many attention FLOPs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from perceiver.padded_input import PaddedInput, row_statistics

# Scores per slice of query rows (one slice: rows x all keys of one example). Kinetics' encoder
# attention alone (784 queries, 52,097 rows 248/408 wide), forward + backward: 0.41 + 0.92 s in
# slices of 2^22, 0.34 + 0.88 s in 2^23, 0.29 + 0.80 s in 2^24, 0.35 + 0.78 s in 2^25.
# The softmax and its backward pass write in place (no second 64 MB buffer per slice, which glibc
# would map and page-fault afresh): the Kinetics step 1.9% faster (alternated steps, one process).
SLICE_SCORES = 2**24
# A training step keeps every slice's weights for the backward pass, instead of recomputing them,
# when they take at most this many bytes in all (Kinetics' encoder at batch 1: 163 MB).
KEEP_WEIGHTS_BYTES = 2**28
# Smaller attentions keep the projections, however few FLOPs absorbing would take: the extra small
# ops cost more than they save. HiP-16's blocks of 64-1,024 rows (at most 0.2 G multiply-adds
# projected) made its 64k step 1.066x slower absorbed; the demo's encoder (32 x 306 rows, 1.06 G)
# 0.949x faster (medians of paired ratios over alternated steps in one process).
MIN_PROJECTED_MACS = 2**29


def absorbed_pays(x_kv: PaddedInput, num_queries: int, num_heads: int, qk_dim: int, v_dim: int) -> bool:
    """Whether attending over the groups' ``C_i + 4`` channels in each of ``num_heads`` heads
    (scores and weighted sums) takes at most half the multiply-adds of projecting the keys and
    values and attending to them: ``2 H N (C_i + 4)`` against ``(qk + v)(C_i + N)`` per row of
    group ``i``. Half, because the explicit softmax and the recomputed scores of the backward pass
    cost more per multiply-add than the projections and the fused attention kernel; and only
    for at least ``MIN_PROJECTED_MACS`` projected multiply-adds in all."""
    absorbed = projected = 0
    for f, _ in x_kv.groups:
        rows, width = f.shape[0] * f.shape[1], f.shape[2]
        absorbed += rows * 2 * num_heads * num_queries * (width + 4)
        projected += rows * (qk_dim + v_dim) * (width + num_queries)
    return 2 * absorbed <= projected and projected >= MIN_PROJECTED_MACS


def absorbed_sdpa_pays(num_queries: int, num_keys: int, width: int, num_heads: int, qk_dim: int,
                       v_dim: int) -> bool:
    """Whether ``absorbed_sdpa`` pays: its attention over ``width`` channels per head costs no more
    than over the projected keys and values (``2 H C <= qk + v``), and the keys are at least twice
    as many as the queries, whose own products with ``W_k`` and ``W_v`` (``N C (qk + v)``) then
    cost at most half the projections they replace (``M C (qk + v)``)."""
    return 2 * num_heads * width <= qk_dim + v_dim and num_keys >= 2 * num_queries


def absorbed_sdpa(q: Tensor, x: Tensor, k_proj: nn.Linear, v_proj: nn.Linear) -> Tensor:
    """Softmax attention of ``q [B or 1, H, N, d]`` (projected queries) to the keys ``k_proj(x)``
    and values ``v_proj(x)`` of the normalised input ``x [B, M, C]``, without projecting them:
    the fused kernel on ``x`` itself. Returns the attended values ``[B, H, N, e]`` (before the
    output projection)."""
    heads = q.shape[1]
    w_k = rearrange(k_proj.weight, "(h d) c -> h d c", h=heads)
    w_v = rearrange(v_proj.weight, "(h e) c -> h e c", h=heads)
    queries = torch.einsum("bhnd,hdc->bhnc", q * q.shape[-1] ** -0.5, w_k.to(q.dtype))
    rows = x[:, None].expand(-1, heads, -1, -1).to(queries.dtype)
    mean = F.scaled_dot_product_attention(queries.expand(x.shape[0], -1, -1, -1), rows, rows, scale=1.0)
    out = torch.einsum("bhnc,hec->bhne", mean, w_v.to(mean.dtype))  # W_v sum_m A_m x_m
    if v_proj.bias is not None:
        out = out + rearrange(v_proj.bias, "(h e) -> h 1 e", h=heads).to(out.dtype)
    if k_proj.bias is not None:  # its exact gradient, 0, keeps it in the graph (as DDP expects)
        out = out + 0.0 * k_proj.bias.sum().to(out.dtype)
    return out


def absorbed_attention(q: Tensor, x_kv: PaddedInput, norm: nn.LayerNorm, k_proj: nn.Linear,
                       v_proj: nn.Linear, max_scores: int | None = None) -> Tensor:
    """Softmax attention of ``q [B or 1, H, N, d]`` (projected queries, one row of them shared by
    the batch) to the keys ``k_proj(norm(x))`` and values ``v_proj(norm(x))`` of
    ``x = x_kv.materialise()`` ``[B, M, C]``, without building ``x``, the keys or the values.
    Returns the attended values ``[B, H, N, dv]`` (before the output projection) in ``q``'s dtype,
    computed in float32 (or float64) whatever autocast is on: its matmuls are few and take the full
    precision."""
    with torch.autocast(q.device.type, enabled=False):
        return _absorbed_attention(q, x_kv, norm, k_proj, v_proj, max_scores).to(q.dtype)


def _absorbed_attention(q: Tensor, x_kv: PaddedInput, norm: nn.LayerNorm, k_proj: nn.Linear,
                        v_proj: nn.Linear, max_scores: int | None) -> Tensor:
    heads, width = q.shape[1], x_kv.shape[-1]
    if tuple(norm.normalized_shape) != (width,):
        raise ValueError(f"norm: expected a LayerNorm over {width} channels, "
                         f"got one over {tuple(norm.normalized_shape)}")
    dtype = torch.promote_types(x_kv.dtype, torch.float32)
    g = None if norm.weight is None else norm.weight.to(dtype)
    beta = torch.zeros(width, dtype=dtype, device=q.device) if norm.bias is None else norm.bias.to(dtype)
    w_k, shift_k = _per_head(k_proj, beta, heads, dtype)
    w_v, shift_v = _per_head(v_proj, beta, heads, dtype)
    q = q.to(dtype) * q.shape[-1] ** -0.5
    u = torch.einsum("bhnd,hdc->bhnc", q, w_k if g is None else w_k * g)  # queries in input channels
    c = torch.einsum("bhnd,hd->bhn", q, shift_k)[..., None]
    queries, rows = [], []
    for f, p in x_kv.groups:
        rows.append(_group_rows(f, p.to(dtype), norm.eps))
        queries.append(_group_queries(u, c, f.shape[-1], p.to(dtype), rows[-1].shape[-1]))
    averages = _GroupedAttention.apply(max_scores or SLICE_SCORES, len(rows), *queries, *rows)
    # sum_m A_m rstd_m (x_m - mu_m) [B, H, N, C]: each group's features, then its padding
    centred_mean = 0
    for y, (f, p) in zip(averages, x_kv.groups, strict=True):
        split = f.shape[-1]
        rstd_sum, mu_shift, mu_sum = (y[..., split + j, None] for j in range(3))
        features, padding = y[..., :split] + mu_shift, rstd_sum * p.to(dtype) + mu_sum
        centred_mean = centred_mean + torch.cat([features, padding], -1)
    return torch.einsum("bhnc,hdc->bhnd", centred_mean, w_v if g is None else w_v * g) + shift_v[:, None]


def _per_head(proj: nn.Linear, beta: Tensor, heads: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """A projection's weight ``[H, d, C]`` and what it adds to every normalised row,
    ``W b + bias`` ``[H, d]``."""
    weight = rearrange(proj.weight.to(dtype), "(h d) c -> h d c", h=heads)
    shift = torch.einsum("hdc,c->hd", weight, beta)
    if proj.bias is not None:
        shift = shift + rearrange(proj.bias.to(dtype), "(h d) -> h d", h=heads)
    return weight, shift


def _group_queries(u: Tensor, c: Tensor, split: int, p: Tensor, width: int) -> Tensor:
    """``a [B or 1, H, N, W_i]``: ``u_f, u_p . p, sum(u_f), sum(u_p), c`` and zeros up to ``width``."""
    u_f, u_p = u[..., :split], u[..., split:]
    sums = [(u_p @ p)[..., None], u_f.sum(-1, keepdim=True), u_p.sum(-1, keepdim=True), c]
    return torch.cat([u_f, *sums, c.new_zeros(*c.shape[:-1], width - split - 4)], -1)


def _group_rows(f: Tensor, p: Tensor, eps: float) -> Tensor:
    """``z [B, M_i, W_i]``: ``rstd (f - mu0)``, the row's factors ``rstd, -rstd (mu - mu0), -rstd mu``
    (``row_statistics``), 1, and zeros up to a width ``W_i`` that is a multiple of 8."""
    mu, rstd, factors = row_statistics(f, p, eps)
    width = f.shape[-1] + 4 + -(f.shape[-1] + 4) % 8
    return _Rows.apply(f.to(rstd.dtype), mu.detach(), rstd, factors, width)


class _Rows(torch.autograd.Function):
    """``z = [rstd (f - mu0) | factors | 1 | 0 ...]`` ``[B, M, width]``, written into one buffer
    block by block (through autograd, the subtraction, product and concatenation each made a
    buffer of the rows' size, which glibc maps and page-faults afresh: Kinetics' video rows took 80
    against 33 ms forward + backward, 58 against 24 ms without gradients). The backward pass gets
    ``rstd``'s gradient from the rows themselves, ``sum_c g_c (f_c - mu0) = sum_c g_c z_c / rstd``."""

    @staticmethod
    def forward(ctx, f, mu0, rstd, factors, width, block_rows=4096):
        c = f.shape[-1]
        z = rstd.new_empty(*rstd.shape, width)
        z[..., c:c + 3], z[..., c + 3], z[..., c + 4:] = factors, 1, 0
        rows = z.view(-1, width)
        features = f.reshape(rows.shape[0], c)
        mu0, rstd_rows = mu0.reshape(-1, 1), rstd.reshape(-1, 1)
        for start in range(0, rows.shape[0], block_rows):
            block = slice(start, start + block_rows)
            torch.sub(features[block], mu0[block], out=rows[block, :c]).mul_(rstd_rows[block])
        ctx.block_rows, ctx.c = block_rows, c
        ctx.save_for_backward(z, rstd)
        return z

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        z, rstd = ctx.saved_tensors
        c, width = ctx.c, z.shape[-1]
        grad_rstd = torch.empty_like(rstd)
        g, rows, flat = grad.reshape(-1, width), z.view(-1, width), grad_rstd.view(-1)
        for start in range(0, rows.shape[0], ctx.block_rows):
            block = slice(start, start + ctx.block_rows)
            torch.sum(g[block, :c] * rows[block, :c], -1, out=flat[block])
        grad_f = grad[..., :c] * rstd[..., None] if ctx.needs_input_grad[0] else None
        return grad_f, None, grad_rstd.div_(rstd), grad[..., c:c + 3], None, None


class _GroupedAttention(torch.autograd.Function):
    """Per group ``i``: queries ``a_i [B or 1, H, N, W_i]`` and rows ``z_i [B, M_i, W_i]`` (keys and
    values at once) -> ``A_i z_i [B, H, N, W_i]``, with ``A = softmax`` over the scores ``a_i . z_i``
    of all groups' rows together."""

    @staticmethod
    def forward(ctx, max_scores, count, *tensors):
        queries, rows = tensors[:count], tensors[count:]
        batch, (heads, n) = rows[0].shape[0], queries[0].shape[1:3]
        spans = _spans([z.shape[1] for z in rows])
        step = max(1, max_scores // spans[-1].start)
        out = [a.new_empty(batch, heads * n, a.shape[-1]) for a in queries]
        size = batch * heads * n * spans[-1].start * rows[0].element_size()
        kept = [] if any(ctx.needs_input_grad) and size <= KEEP_WEIGHTS_BYTES else None
        for b in range(batch):
            for r in range(0, heads * n, step):
                weights = _weights(queries, rows, spans, b, slice(r, r + step))
                for i, z in enumerate(rows):
                    torch.mm(weights[:, spans[i]], z[b], out=out[i][b, r:r + step])
                if kept is not None:
                    kept.append(weights)
        ctx.max_scores, ctx.spans = max_scores, spans
        ctx.save_for_backward(*queries, *rows, *(kept or []))
        return tuple(rearrange(y, "b (h n) w -> b h n w", h=heads) for y in out)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads):
        count = len(grads)
        saved = ctx.saved_tensors  # read once: checkpointing's saved tensors unpack only once
        queries, rows, kept = saved[:count], saved[count:2 * count], iter(saved[2 * count:])
        spans = ctx.spans
        batch, (heads, n) = rows[0].shape[0], queries[0].shape[1:3]
        step = max(1, ctx.max_scores // spans[-1].start)
        grads = [rearrange(g, "b h n w -> b (h n) w") for g in grads]
        need_a, need_z = ctx.needs_input_grad[2:2 + count], ctx.needs_input_grad[2 + count:]
        grad_a = [torch.zeros_like(_flat(a)) if need else None
                  for a, need in zip(queries, need_a, strict=True)]
        grad_z = [torch.empty_like(z) if need else None for z, need in zip(rows, need_z, strict=True)]
        for b in range(batch):
            for r in range(0, heads * n, step):
                part = slice(r, r + step)
                weights = next(kept, None)
                if weights is None:  # not kept: recomputed
                    weights = _weights(queries, rows, spans, b, part)
                grad_weights = torch.empty_like(weights)
                for i, z in enumerate(rows):
                    torch.mm(grads[i][b, part], z[b].T, out=grad_weights[:, spans[i]])
                    grad_weights[:, spans[i].stop:spans[i + 1].start].zero_()  # the gaps' weights are 0
                grad_scores = torch._softmax_backward_data(grad_weights, weights, -1, weights.dtype,
                                                           grad_input=grad_weights)
                for i, (a, z) in enumerate(zip(queries, rows, strict=True)):
                    cols, ab = spans[i], _flat(a)[_example(a, b), part]
                    if need_a[i]:
                        grad_a[i][_example(a, b), part].addmm_(grad_scores[:, cols], z[b])
                    if need_z[i] and r == 0:
                        torch.mm(grad_scores[:, cols].T, ab, out=grad_z[i][b])
                    elif need_z[i]:
                        grad_z[i][b].addmm_(grad_scores[:, cols].T, ab)
                    if need_z[i]:
                        grad_z[i][b].addmm_(weights[:, cols].T, grads[i][b, part])
        grad_a = [None if g is None else rearrange(g, "b (h n) w -> b h n w", h=heads) for g in grad_a]
        return None, None, *grad_a, *grad_z


def _flat(a: Tensor) -> Tensor:
    return rearrange(a, "b h n w -> b (h n) w")


def _example(a: Tensor, b: int) -> int:
    """Example ``b``'s index in queries ``a`` (their one row when the batch shares them)."""
    return b if a.shape[0] > 1 else 0


def _spans(lengths: list[int]) -> list[slice]:
    """Each group's columns in a slice's scores, starting at multiples of 16 (64 bytes in float32,
    where the matmuls write fastest), and last an empty span whose start is the scores' row length."""
    spans, start = [], 0
    for length in lengths:
        spans.append(slice(start, start + length))
        start += -(-length // 16) * 16
    return spans + [slice(start, start)]


def _weights(queries, rows, spans, b: int, part: slice) -> Tensor:
    """Softmax weights ``[rows of the slice, L]`` of example ``b``'s query rows ``part`` over all
    groups' rows (laid out as ``spans``; zero in the gaps)."""
    first = _flat(queries[0])[_example(queries[0], b), part]
    scores = first.new_empty(first.shape[0], spans[-1].start)
    for i, (a, z) in enumerate(zip(queries, rows, strict=True)):
        ab = _flat(a)[_example(a, b), part]
        torch.mm(ab, z[b].T, out=scores[:, spans[i]])
        scores[:, spans[i].stop:spans[i + 1].start].fill_(float("-inf"))
    return torch.softmax(scores, dim=-1, out=scores)  # in place: no second buffer of the slice's size
