"""Cross-attention to a long input array, streamed in chunks: memory O(chunk) instead of O(M).

The encoder's cross-attention normalises and projects every input element to keys and values
(``[B, M, qk_dim + v_dim]``, several times the input's own size) and autograd keeps them for the
backward pass. ``streamed_attention`` walks the input in chunks of ``chunk_size`` elements
instead: each chunk is normalised and projected, attended to, and the partial outputs are merged
exactly through their log-sum-exp. The backward pass recomputes each chunk's keys and values (one
more projection of the input) and feeds the merged output and log-sum-exp to the chunk's
attention backward, so the gradients are those of attention over the whole array. Without
gradients nothing is kept: inference over M elements needs memory for the input and one chunk.

The input may also be a ``ChunkedInput``: the recipe that computes ``x`` a chunk at a time (token
ids embedded and added to their positions). Then ``x`` itself is never held, not even for the
backward pass, which keeps only the recipe's tensors (the ids) and recomputes each chunk.

On CPU, with q/k and v heads of one width, each chunk runs PyTorch's fused flash-attention
kernel; otherwise (other devices, unequal widths) an explicit softmax over the chunk's scores
``[B, H, N, chunk]`` (tested on CPU against the flash kernel; not yet run on a GPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

aten = torch.ops.aten
KeyValues = Callable[[Tensor], tuple[Tensor, Tensor]]  # x chunk [B, c, C] -> k, v [B, H, c, D]


@dataclass(frozen=True, eq=False)  # compared by identity: its fields are tensors
class ChunkedInput:
    """An input array ``x [B, M, C]`` held as the recipe that computes any chunk of it:
    ``x[:, a:b] == compute(*(t[:, a:b] for t in tensors))`` for ``tensors [B or 1, M, ...]``
    (token ids ``[B, M]``, a position table ``[1, M, C]``); ``compute`` may also read ``params``
    whole (an embedding table), which then get their gradients through it. ``shape`` and ``dtype``
    are those of ``x``. Streamed attention computes it a chunk at a time; ``materialise()`` whole.

    Each chunk's gradient of ``params`` is dense (the whole embedding table, once per chunk): cheap
    for bytes (262 rows), not for a large vocabulary (``pays_in_chunks``)."""

    tensors: tuple[Tensor, ...]
    compute: Callable[..., Tensor]
    params: tuple[Tensor, ...]
    shape: torch.Size
    dtype: torch.dtype

    @classmethod
    def of(cls, x: Tensor) -> ChunkedInput:
        """A computed array as its own recipe."""
        return cls((x,), _identity, (), x.shape, x.dtype)

    @property
    def device(self) -> torch.device:
        return self.tensors[0].device

    def pays_in_chunks(self, chunk_size: int) -> bool:
        """Whether computing it ``chunk_size`` elements at a time costs about what the chunks do:
        ``params`` no larger than one chunk ``[chunk_size, C]``, since each chunk's backward pass
        makes a dense gradient of them (262 byte embeddings of any width pay in chunks of 262 or
        more; a 32k-token vocabulary would not)."""
        return sum(p.numel() for p in self.params) <= chunk_size * self.shape[-1]

    def materialise(self) -> Tensor:
        return self.compute(*self.tensors)

    def to(self, dtype: torch.dtype) -> ChunkedInput:
        if dtype == self.dtype:
            return self
        compute = self.compute
        return replace(self, compute=lambda *chunks: compute(*chunks).to(dtype), dtype=dtype)


def _identity(x: Tensor) -> Tensor:
    return x


def _additive(mask: Tensor | None, bias: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Bool keep-mask ``[B, c]`` and finite key bias ``[B, H or 1, c]`` -> additive ``[B, H or 1,
    1, c]`` (a large finite negative on masked keys, not -inf, so that a chunk whose keys are all
    masked gives finite values and a merge weight of zero)."""
    if mask is None:
        return None
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)[:, None, None, :]
    if bias is not None:
        out = out + bias.to(dtype)[:, :, None, :]
    return out.masked_fill(~mask[:, None, None, :], torch.finfo(dtype).min)


def _accumulator(q: Tensor) -> torch.dtype:
    return torch.promote_types(q.dtype, torch.float32)


def fused(q: Tensor, v: Tensor) -> bool:
    """Whether PyTorch's CPU flash kernel takes these shapes (CPU, equal q/k and v head widths)."""
    return q.device.type == "cpu" and q.shape[-1] == v.shape[-1]


def _chunk_forward(q, k, v, bias, scale, use_fused) -> tuple[Tensor, Tensor]:
    """Attention of ``q [B, H, N, D]`` over one chunk: output ``[B, H, N, Dv]``, lse ``[B, H, N]``."""
    if use_fused:
        return aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=bias,
                                                                scale=scale)
    scores = (q @ k.transpose(-1, -2)).to(_accumulator(q)) * scale
    if bias is not None:
        scores = scores + bias
    lse = scores.logsumexp(-1)
    return ((scores - lse[..., None]).exp().to(v.dtype) @ v), lse


def _chunk_backward(grad, q, k, v, out, lse, bias, scale, use_fused) -> tuple[Tensor, Tensor, Tensor]:
    """``(dq, dk, dv)`` of one chunk's share of the attention whose merged output is ``out``."""
    if use_fused:
        return aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad, q, k, v, out, lse, 0.0, False, attn_mask=bias, scale=scale)
    acc = _accumulator(q)
    scores = (q @ k.transpose(-1, -2)).to(acc) * scale
    if bias is not None:
        scores = scores + bias
    p = (scores - lse[..., None]).exp()
    dv = p.to(v.dtype).transpose(-1, -2) @ grad
    dp = (grad @ v.transpose(-1, -2)).to(acc)
    ds = p * (dp - (grad.to(acc) * out.to(acc)).sum(-1, keepdim=True)) * scale
    return (ds.to(q.dtype) @ k), (ds.to(q.dtype).transpose(-1, -2) @ q), dv


class _StreamedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, mask, bias, key_values, compute, chunk_size, scale, use_fused, num_inputs, *tensors):
        inputs = tensors[:num_inputs]
        out = lse = None
        for start in range(0, inputs[0].shape[1], chunk_size):
            part = slice(start, start + chunk_size)
            # detached first: views of the inputs here would claim requires_grad
            k, v = key_values(compute(*(t.detach()[:, part] for t in inputs)))
            additive = _additive(*_chunk(mask, bias, part), q.dtype)
            use_fused = fused(q, v) if use_fused is None else use_fused
            o, o_lse = _chunk_forward(q, k, v, additive, scale, use_fused)
            lse_dtype = o_lse.dtype
            o, o_lse = o.to(_accumulator(q)), o_lse.to(_accumulator(q))
            if out is None:
                out, lse = o, o_lse
                continue
            merged = torch.logaddexp(lse, o_lse)
            out = out * (lse - merged).exp()[..., None] + o * (o_lse - merged).exp()[..., None]
            lse = merged
        out = out.to(q.dtype)
        device = q.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.key_values, ctx.compute, ctx.chunk_size, ctx.scale = key_values, compute, chunk_size, scale
        ctx.use_fused, ctx.num_inputs = use_fused, num_inputs
        ctx.save_for_backward(q, mask, bias, out, lse.to(lse_dtype), *tensors)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, mask, bias, out, lse, *tensors = ctx.saved_tensors
        inputs, params = tensors[:ctx.num_inputs], tensors[ctx.num_inputs:]
        device, autocast, dtype = ctx.autocast
        grad = grad.contiguous()
        dq = torch.zeros_like(q, dtype=_accumulator(q))
        first = 9  # the position of the first input among forward's arguments
        dinputs = [torch.empty_like(t) if ctx.needs_input_grad[first + i] else None
                   for i, t in enumerate(inputs)]
        dparams = [None] * len(params)
        trained = [i for i, p in enumerate(params) if p.requires_grad]
        learning = [i for i, d in enumerate(dinputs) if d is not None]
        for start in range(0, inputs[0].shape[1], ctx.chunk_size):
            part = slice(start, start + ctx.chunk_size)
            chunks = [t[:, part].detach().requires_grad_(d is not None)
                      for t, d in zip(inputs, dinputs, strict=True)]
            with torch.set_grad_enabled(bool(learning) or bool(trained)), \
                    torch.autocast(device, dtype=dtype, enabled=autocast):
                k, v = ctx.key_values(ctx.compute(*chunks))
            additive = _additive(*_chunk(mask, bias, part), q.dtype)
            dq_c, dk, dv = _chunk_backward(grad, q, k.detach(), v.detach(), out, lse, additive,
                                           ctx.scale, ctx.use_fused)
            dq += dq_c
            wanted = [chunks[i] for i in learning] + [params[i] for i in trained]
            if not wanted:  # only the queries learn
                continue
            grads = torch.autograd.grad((k, v), wanted, (dk, dv), allow_unused=True)
            for i, g in zip(learning, grads[:len(learning)], strict=True):
                dinputs[i][:, part] = 0 if g is None else g
            for i, g in zip(trained, grads[len(learning):], strict=True):
                if g is not None:
                    dparams[i] = g if dparams[i] is None else dparams[i] + g
        return (dq.to(q.dtype), *[None] * (first - 1), *dinputs, *dparams)


def _chunk(mask: Tensor | None, bias: Tensor | None, part: slice):
    return (None if mask is None else mask[:, part]), (None if bias is None else bias[..., part])


def streamed_attention(q: Tensor, x: Tensor | ChunkedInput, key_values: KeyValues,
                       params: Sequence[Tensor], mask: Tensor | None, chunk_size: int, scale: float,
                       use_fused: bool | None = None, bias: Tensor | None = None) -> Tensor:
    """Attention of ``q [B, H, N, D]`` over the keys and values of input ``x [B, M, C]`` (a tensor,
    or a ``ChunkedInput`` computed a chunk at a time), computed ``chunk_size`` elements at a time
    by ``key_values`` (whose weights are ``params``).

    ``mask [B, M]`` (bool, True = keep) hides keys; every example must keep at least one.
    ``bias [B, H or 1, M]`` (finite, and not trained: a bias that requires a gradient raises) is
    added to the scores of the keys. Returns
    ``[B, H, N, Dv]``. No attention dropout. ``use_fused`` picks the chunk kernel: PyTorch's CPU
    flash kernel or the explicit softmax (default: the flash kernel wherever ``fused`` allows).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}")
    if bias is not None and bias.requires_grad:
        raise ValueError("bias: streamed attention gives the key bias no gradient; got one that "
                         "requires it (attend without chunks: cross_chunk_size=None)")
    if isinstance(x, Tensor):
        x = ChunkedInput.of(x)
    if bias is not None and mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return _StreamedAttention.apply(q, mask, bias, key_values, x.compute, chunk_size, scale, use_fused,
                                    len(x.tensors), *x.tensors, *x.params, *params)
