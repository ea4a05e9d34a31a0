"""Many queries decoded in chunks, each chunk recomputed in the backward pass.

A decoder with one query per output element (a pixel, an audio sample, a HiP position) can decode
``chunk_size`` queries at a time. With activation checkpointing on, a training step keeps only the
queries and the key/value array; the backward pass recomputes one chunk at a time and takes its
gradients.

Why not ``torch.utils.checkpoint`` on each chunk of ``queries.split(...)``? The gradients would be
the same, but autograd would hold every chunk's query gradient until the last one arrived (the
split's backward concatenates them). Those gradients would sit between the chunks' recomputed
temporaries. On CPU, glibc then cannot give that memory back.

Here each chunk's query gradient goes into one buffer as it comes. For HiP-16 at 2M positions
(head chunks of 4,096), the peak RSS of a checkpointed step fell from 5.8 GB to 3.3 GB; without
checkpointing it is 5.1 GB (docs/benchmarks.md, "Activation checkpointing"). Each chunk's random
numbers (dropout) and autocast state are replayed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import get_device_states, set_device_states


def _rng_state(*tensors: Tensor) -> tuple:
    return torch.get_rng_state(), *get_device_states(*tensors)


class _RecomputedChunks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, layer, chunk_size, queries, x_kv, *params):
        out, ctx.states = None, []
        for start in range(0, queries.shape[1], chunk_size):
            part = slice(start, start + chunk_size)
            ctx.states.append(_rng_state(queries, x_kv))
            y = layer(queries[:, part], x_kv)
            if out is None:
                out = y.new_empty(y.shape[0], queries.shape[1], *y.shape[2:])
            out[:, part] = y
        device = queries.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.layer, ctx.chunk_size = layer, chunk_size
        ctx.save_for_backward(queries, x_kv, *params)
        return out

    @staticmethod
    def backward(ctx, grad):
        queries, x_kv, *params = ctx.saved_tensors
        device, autocast, dtype = ctx.autocast
        rng_device = "cuda" if device == "cpu" else device  # the device RNGs forked besides the CPU's
        wants_q, wants_kv, *wants_params = ctx.needs_input_grad[2:]
        trained = [i for i, wanted in enumerate(wants_params) if wanted]
        dq = torch.empty_like(queries, memory_format=torch.contiguous_format) if wants_q else None
        dkv, dparams = None, [None] * len(params)
        # the last chunk first, as autograd would order the chunks' backward passes: the same sums
        for i, (cpu_state, devices, device_states) in reversed(list(enumerate(ctx.states))):
            part = slice(i * ctx.chunk_size, (i + 1) * ctx.chunk_size)
            q = queries[:, part].detach().requires_grad_(wants_q)
            kv = x_kv.detach().requires_grad_(wants_kv)
            with torch.random.fork_rng(devices=devices, device_type=rng_device), torch.enable_grad(), \
                    torch.autocast(device, dtype=dtype, enabled=autocast):
                torch.set_rng_state(cpu_state)
                set_device_states(devices, device_states, device_type=rng_device)
                y = ctx.layer(q, kv)
            wanted = [t for t, w in ((q, wants_q), (kv, wants_kv)) if w] + [params[j] for j in trained]
            grads = list(torch.autograd.grad(y, wanted, grad[:, part], allow_unused=True))
            if wants_q:
                g = grads.pop(0)
                dq[:, part] = 0 if g is None else g
            if wants_kv and (g := grads.pop(0)) is not None:
                dkv = g if dkv is None else dkv + g
            for j, g in zip(trained, grads, strict=True):
                if g is not None:
                    dparams[j] = g if dparams[j] is None else dparams[j] + g
        return None, None, dq, dkv, *dparams


def recomputed_chunks(layer: nn.Module, queries: Tensor, x_kv: Tensor, chunk_size: int) -> Tensor:
    """``layer(queries, x_kv)`` for queries ``[B, O, q_dim]`` over ``x_kv [B, M, kv_dim]``,
    ``chunk_size`` queries at a time; output ``[B, O, q_dim]``. Only ``queries``, ``x_kv`` and
    the layer's parameters are kept for the backward pass, which recomputes one chunk at a time.
    The outputs and gradients are those of the whole call, up to the order of the chunks' sums."""
    params = [p for p in layer.parameters() if p.requires_grad]
    return _RecomputedChunks.apply(layer, chunk_size, queries, x_kv, *params)
