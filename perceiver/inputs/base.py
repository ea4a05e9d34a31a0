"""Shared checks for input adapters.

An input adapter maps raw ``inputs`` to the encoder's input array and passes the key-padding mask
through: ``forward(inputs, attention_mask=None) -> (x [B, M, C], attention_mask [B, M] or None)``.
It has ``output_dim`` (C), and ``num_positions`` (M) when M is fixed by its config.
"""

from __future__ import annotations

import functools
import math
import sys

import torch
from torch import Tensor

MAX_INPUT_MAGNITUDE = 1e18  # LayerNorm squares its inputs: float32 holds squares up to ~3e38


def eager_under_compile(fn):
    """``fn``, run eagerly where torch.compile traces its caller (``torch.compiler.disable``). That
    wrapper imports ``torch._dynamo`` (0.8 s and ~120 MB, sympy and triton among it), so it is built
    on the first call after torch.compile has loaded it: a model never compiled never imports it."""
    disabled = None

    @functools.wraps(fn)
    def call(*args, **kwargs):
        nonlocal disabled
        if disabled is None and "torch._dynamo" in sys.modules:
            disabled = torch.compiler.disable(fn)
        return (fn if disabled is None else disabled)(*args, **kwargs)
    return call


# Eager, outside compiled graphs: it reads the values (a graph break anyway), and traced by
# torch.compile in a multimodal model the label's rank check raised on a valid [B, 10] tensor.
@eager_under_compile
def check_tensor(name: str, value, rank: int | tuple[int, ...], floating: bool | None = None):
    """Raise ``ValueError`` unless ``value`` is a tensor of the given rank(s) and dtype kind, and,
    if floating-point, holds only finite values up to ``MAX_INPUT_MAGNITUDE``."""
    ranks = (rank,) if isinstance(rank, int) else rank
    if not isinstance(value, Tensor):
        raise ValueError(f"{name}: expected a tensor, got {type(value).__name__}")
    if value.dim() not in ranks:
        raise ValueError(f"{name}: expected a {' or '.join(map(str, ranks))}-D tensor, "
                         f"got shape {list(value.shape)}")
    if floating is True and not value.dtype.is_floating_point:
        raise ValueError(f"{name}: expected a floating-point tensor, got {value.dtype}")
    if floating is True and value.numel():
        peak = float(value.abs().max())  # NaN if any value is NaN
        if not math.isfinite(peak):
            bad = int((~torch.isfinite(value)).sum())
            raise ValueError(f"{name}: expected finite values, got {bad} NaN or infinite value(s)")
        if peak > MAX_INPUT_MAGNITUDE:
            raise ValueError(f"{name}: expected magnitudes up to {MAX_INPUT_MAGNITUDE:g} (larger ones "
                             f"overflow float32 normalisation), got {peak:g}")
    if floating is False and (value.dtype.is_floating_point or value.dtype == torch.bool):
        raise ValueError(f"{name}: expected an integer tensor, got {value.dtype}")


def concat_positions(x: Tensor, positions: Tensor) -> Tensor:
    """``x [B, M, C]`` with positions ``[M, P]`` appended to every example -> ``[B, M, C + P]``."""
    return torch.cat([x, positions.to(x.dtype).expand(x.shape[0], -1, -1)], dim=-1)


def check_size(name: str, actual, expected, what: str) -> None:
    if tuple(actual) != tuple(expected):
        raise ValueError(f"{name}: expected {what} {list(expected)}, got {list(actual)}")
