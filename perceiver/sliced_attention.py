"""Softmax attention as explicit matmuls over slices of the batch and heads, with a hand-written
backward pass: the path ``MultiHeadAttention`` takes on CPU under bf16 autocast, where PyTorch's
flash kernel is no faster than in fp32, and for values of another head width than the keys (the
language perceiver's 32 / 160), which that kernel does not take at all.

Each slice (a few examples, or a few heads of one example) holds at most ``max_scores`` scores,
small enough to stay in cache: ``S = (q * scale) @ k^T``, the mask, ``P = softmax(S)``,
``out = P @ v``. The backward pass keeps the weights ``P`` of each slice (2 bytes a score in
bf16) and the scaled queries, keys and values, and runs the same slices:

    dV = P^T dO     dP = dO V^T     dS = P * (dP - rowsum(dP * P))     dQ = scale dS K     dK = dS^T (scale q)

Written by hand rather than left to autograd over the slices, it saves what autograd spent
around the matmuls: a zero-filled gradient of the whole ``k`` and ``v`` per slice (the backward of
indexing) and their sum, the multiplication of every score by the scale (here the queries are
scaled, exactly so for power-of-two head widths), and transposed copies of the keys. Outputs and
gradients are written straight into ``[B, N, H, d]`` buffers, the layout the projections around
it read, so no head rearrangement is copied either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

# Under bf16 autocast on CPU, attentions of at most EXPLICIT_BF16_MAX_SCORES scores (batch x heads x
# queries x keys) run here, in slices of at most SLICE_SCORES. Config A's bf16 step
# (benchmarks/run.py) took 0.78 s with autograd over such slices against 0.85 s with only its
# self-attentions explicit and whole; its cross-attentions alone (256 x 2048 and 2048 x 256 scores per
# head, 8 heads, batch 4) took 77 and 60 ms against the flash kernel's 104 and 94 ms. The
# hand-written backward pass took the step from 0.730-0.739 s to 0.704-0.727 s (bench workers
# alternated), and slices of 2^20 or 2^21 scores measure the same as 2^22. Larger
# attentions keep the fused kernel: explicit attention keeps its weights for the backward pass (2
# bytes a score), where the fused kernel keeps none. fp32 keeps the fused kernel where it has one:
# explicit attention, whole or sliced, was no faster there (enc 107-114 vs 108-110 ms, dec 104-128
# vs 97 ms). Where values are wider or narrower than keys, the kernel does not apply and SDPA falls
# back to whole matmuls through autograd, so such attentions run here at any size and dtype, in
# the same slices: the language perceiver's fp32 step went from 4.24-4.58 s to 4.20-4.40 s,
# no-grad from 1.38-1.51 s to 1.39-1.46 s, and its peak RSS from 3.29-3.46 GB to 3.16-3.19 GB
# (bench workers alternated with the previous commit). The softmax and its backward pass write over
# the scores and their gradient in place: config A's bf16 step 1.5-2.2% faster (medians of ratios
# over 10 alternated steps in one process, twice), the same loss.
SLICE_SCORES = 2**22
EXPLICIT_BF16_MAX_SCORES = 2**24


def explicit_pays(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> bool:
    """Whether ``q [B, H, N, d]`` attending to ``k [B, H, M, d]`` and ``v [B, H, M, dv]`` runs
    faster here than in SDPA: on CPU under bf16 autocast up to ``EXPLICIT_BF16_MAX_SCORES``, and
    on CPU whenever ``dv != d``, where SDPA has no fused kernel and falls back to unsliced matmuls
    through autograd (a float ``mask`` that needs a gradient stays with SDPA, which gives it one)."""
    if q.device.type != "cpu" or (mask is not None and mask.requires_grad):
        return False
    if v.shape[-1] != q.shape[-1]:
        return True
    if not torch.is_autocast_enabled("cpu") or torch.get_autocast_dtype("cpu") != torch.bfloat16:
        return False
    return q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] <= EXPLICIT_BF16_MAX_SCORES


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                       dropout_p: float = 0.0) -> tuple[Tensor, Tensor]:
    """Softmax attention as matmuls, whole and through autograd: ``q [B, H, N, d]``,
    ``k [B, H, M, d]``, ``v [B, H, M, dv]`` and ``mask`` (None, a bool keep-mask or an additive
    float mask, broadcast to ``[B, H, N, M]``) -> (output ``[B, H, N, dv]``, weights ``[B, H, N, M]``)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        scores = scores + mask
    weights = scores.softmax(dim=-1)
    return torch.matmul(F.dropout(weights, dropout_p), v), weights


def explicit_attention_in_slices(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                                 dropout_p: float = 0.0, max_scores: int | None = None) -> Tensor:
    """``explicit_attention``'s output ``[B, H, N, dv]``, computed over slices of the batch and heads
    of at most ``max_scores`` scores each (default ``SLICE_SCORES``; one head of one
    example where even that is more). ``mask`` gets no gradient (``explicit_pays`` sends a mask
    that needs one elsewhere), and the backward pass cannot itself be differentiated."""
    if mask is not None and mask.requires_grad:
        raise ValueError("attention_mask: the sliced explicit path gives a key bias no gradient; "
                         "got one that requires it")
    max_scores = SLICE_SCORES if max_scores is None else max_scores
    return _SlicedAttention.apply(q, k, v, mask, dropout_p, max_scores)


def _slices(batch: int, heads: int, pair: int, max_scores: int) -> list[tuple[slice, slice]]:
    """(examples, heads) index pairs covering ``[batch, heads]``, each of at most ``max_scores``
    scores (``pair`` per example and head), at least one head of one example."""
    per_slice = max(1, max_scores // pair)
    examples, head_step = max(1, per_slice // heads), min(heads, per_slice)
    return [(slice(i, i + examples), slice(j, j + head_step))
            for i in range(0, batch, examples) for j in range(0, heads, head_step)]


def _rows(x: Tensor) -> Tensor:
    """``[b, h, n, d] -> [b * h, n, d]``: a slice's matrices for ``bmm`` (a view where it can be)."""
    return x.reshape(-1, x.shape[-2], x.shape[-1])


def _store(target: Tensor, b: slice, h: slice, rows: Tensor) -> None:
    """Write a slice's ``[b * h, n, d]`` result into ``target[b, h]``."""
    target[b, h] = rows.view(target[b, h].shape)


def _heads_last(like: Tensor, width: int, dtype: torch.dtype) -> Tensor:
    """An empty ``[B, H, L, width]`` tensor stored as ``[B, L, H, width]`` (as ``like [B, H, L, _]``)."""
    b, h, length = like.shape[:3]
    return like.new_empty(b, length, h, width, dtype=dtype).transpose(1, 2)


class _SlicedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, dropout_p, max_scores):
        batch, heads, n, m = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        scale = q.shape[-1] ** -0.5
        # queries shared by the batch (expanded, stride 0) are scaled once; keys and values are
        # laid out head by head, which bmm reads fastest
        shared = q.stride(0) == 0 and batch > 1
        q_scaled = (q[:1] * scale).contiguous().expand_as(q) if shared else (q * scale).contiguous()
        k, v = k.contiguous(), v.contiguous()
        out = _heads_last(q, v.shape[-1], torch.promote_types(q.dtype, v.dtype))
        slices, saved, dropout_masks = _slices(batch, heads, n * m, max_scores), [], []
        backward = any(ctx.needs_input_grad[:3])  # else no slice's weights are kept
        for b, h in slices:
            queries = q_scaled[b, h]  # [examples, heads, n, d]
            scores = torch.bmm(_rows(queries), _rows(k[b, h]).transpose(1, 2))
            if mask is not None:
                grid = scores.view(-1, queries.shape[1], n, m)
                part = mask[b, h if mask.shape[1] > 1 else slice(None)]
                if part.dtype == torch.bool:
                    grid.masked_fill_(~part, float("-inf"))
                else:
                    grid.add_(part)
            weights = torch.softmax(scores, dim=-1, out=scores)  # in place: no fresh buffer
            if backward:
                saved.append(weights)
            if dropout_p > 0:  # the kept weights, scaled by 1 / (1 - p)
                kept = torch.rand_like(weights, dtype=torch.float32) >= dropout_p
                if backward:
                    dropout_masks.append(kept)
                weights = weights * kept * (1 / (1 - dropout_p))
            _store(out, b, h, torch.bmm(weights, _rows(v[b, h])))
        ctx.slices, ctx.scale, ctx.dropout_p = slices, scale, dropout_p
        ctx.save_for_backward(q_scaled, k, v, *saved, *dropout_masks)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q_scaled, k, v, *saved = ctx.saved_tensors
        dropout_masks = saved[len(ctx.slices):]
        grad_q = _heads_last(q_scaled, q_scaled.shape[-1], q_scaled.dtype)
        grad_k = _heads_last(k, k.shape[-1], k.dtype)
        grad_v = _heads_last(v, v.shape[-1], v.dtype)
        for i, (b, h) in enumerate(ctx.slices):
            weights = saved[i]
            go = _rows(grad_out[b, h]).to(weights.dtype)
            grad_used = torch.bmm(go, _rows(v[b, h]).transpose(1, 2))
            used = weights
            if dropout_masks:  # through the dropout: the kept weights and their gradients, scaled
                keep = dropout_masks[i]
                inverse = 1 / (1 - ctx.dropout_p)
                used, grad_used = weights * keep * inverse, grad_used * keep * inverse
            _store(grad_v, b, h, torch.bmm(used.transpose(1, 2), go))
            grad_scores = torch._softmax_backward_data(grad_used, weights, -1, weights.dtype,
                                                       grad_input=grad_used)
            _store(grad_q, b, h, torch.bmm(grad_scores, _rows(k[b, h])) * ctx.scale)
            _store(grad_k, b, h, torch.bmm(grad_scores.transpose(1, 2), _rows(q_scaled[b, h])))
        return grad_q, grad_k, grad_v, None, None, None
