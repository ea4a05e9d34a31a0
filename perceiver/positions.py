"""Position encodings: Fourier features (DeepMind's parameterisation) and learned tables."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def _as_dims(index_dims: int | Sequence[int]) -> tuple[int, ...]:
    dims = (index_dims,) if isinstance(index_dims, int) else tuple(int(d) for d in index_dims)
    if not dims or any(d < 1 for d in dims):
        raise ValueError(f"index_dims: expected positive sizes, got {index_dims!r}")
    return dims


def fourier_channels(num_dims: int, num_bands: int, concat_pos: bool = True, sine_only=False) -> int:
    """Width of :func:`fourier_features` for ``num_dims`` index dimensions."""
    return num_dims * num_bands * (1 if sine_only else 2) + (num_dims if concat_pos else 0)


def grid_positions(index_dims: Sequence[int], index: Tensor | None = None, endpoint: bool = True) -> Tensor:
    """Positions in ``[-1, 1]`` of a grid, float32 ``[prod(index_dims), d]`` (or ``[len(index), d]``).

    Per dimension ``linspace(-1, 1, n)``, end points included, combined in row-major ('ij') order.
    With ``endpoint=False`` position ``i`` is ``-1 + 2 i / n`` (numpy's ``endpoint=False``): the
    convention of DeepMind's subsampled decoder queries. ``index`` selects flat (row-major)
    indices: the same positions the full grid has there.
    """
    dims = _as_dims(index_dims)
    if index is None:
        index = torch.arange(math.prod(dims), device="cpu")  # cpu even under a meta device context
    else:
        check_index(index, math.prod(dims), name="index")
    coords = torch.unravel_index(index.cpu(), dims)
    if endpoint:  # rows of torch.linspace, as DeepMind's and transformers' full grids
        axes = [torch.linspace(-1.0, 1.0, n, device="cpu")[c] for n, c in zip(dims, coords, strict=True)]
    else:  # as their subsampled queries: (2 i) / n in float32, then -1
        axes = [-1 + (2 * c) / torch.tensor(n, device="cpu") for n, c in zip(dims, coords, strict=True)]
    return torch.stack(axes, dim=-1).float()


def fourier_features(
    index_dims: int | Sequence[int],
    num_bands: int,
    max_resolution: Sequence[int] | None = None,
    concat_pos: bool = True,
    sine_only: bool = False,
    index: Tensor | None = None,
    endpoint: bool = True,
) -> Tensor:
    """Fourier position features of a grid, ``[prod(index_dims), C]`` (``[len(index), C]``).

    For grid dims ``(n_1..n_d)`` and ``K = num_bands``: positions ``x_i = linspace(-1, 1, n_i)``;
    frequencies ``f_{i,k} = linspace(1, max_resolution_i / 2, K)`` (linear; ``max_resolution``
    defaults to the grid size); features ``[x_1..x_d (concat_pos), sin(pi f_{i,k} x_i) (i outer,
    k inner), cos(...) same order (unless sine_only)]``, so ``C = d*2K + d``. ``endpoint=False``
    spaces positions as ``-1 + 2 i / n`` (see :func:`grid_positions`).

    Computed in float32 in DeepMind's order of operations (``sin(pi * (x * f))``), which is what
    the released checkpoints were trained with and what transformers computes, bit for bit: at
    high frequencies (audio: f up to 15,360) the float32 phase differs from the exact one by
    ~1e-3, and a converted checkpoint only reproduces its logits with the same rounding.
    """
    dims = _as_dims(index_dims)
    resolution = dims if max_resolution is None else tuple(max_resolution)
    if len(resolution) != len(dims):
        raise ValueError(f"max_resolution: expected {len(dims)} values (one per index dim), "
                         f"got {resolution!r}")
    pos = grid_positions(dims, index, endpoint)  # [n, d]
    freqs = torch.stack([torch.linspace(1.0, r / 2, num_bands, device="cpu") for r in resolution])  # [d, K]
    angles = math.pi * (pos[:, :, None] * freqs[None]).flatten(1)  # [n, d*K]
    parts = [pos] if concat_pos else []
    parts.append(torch.sin(angles))
    if not sine_only:
        parts.append(torch.cos(angles))
    return torch.cat(parts, dim=-1)


class FourierPositions(nn.Module):
    """Fixed Fourier features for a grid, cached as a non-persistent buffer ``[prod(dims), C]``."""

    def __init__(self, index_dims, num_bands, max_resolution=None, concat_pos=True, sine_only=False,
                 endpoint=True):
        super().__init__()
        self.index_dims = _as_dims(index_dims)
        self.num_bands = num_bands
        self.max_resolution = None if max_resolution is None else tuple(max_resolution)
        self.concat_pos = concat_pos
        self.sine_only = sine_only
        self.num_channels = fourier_channels(len(self.index_dims), num_bands, concat_pos, sine_only)
        feats = fourier_features(self.index_dims, num_bands, self.max_resolution, concat_pos, sine_only,
                                 endpoint=endpoint)
        self.register_buffer("table", feats, persistent=False)

    def forward(self, index: Tensor | None = None) -> Tensor:
        """All grid positions, or the flat ``index`` subset: ``[n, C]`` (``[B, n, C]`` for a 2-D
        per-example index)."""
        if index is None:
            return self.table
        check_index(index, self.table.shape[0], per_example=True)
        return self.table[index.to(self.table.device)]


def check_index(index: Tensor, size: int, name: str = "query_index", per_example: bool = False) -> None:
    """Validate an integer index into a table of ``size`` rows: 1-D ``[O]``, or with
    ``per_example`` also 2-D ``[B, O]`` (different rows for each example)."""
    dims = (1, 2) if per_example else (1,)
    if not isinstance(index, Tensor) or index.dtype.is_floating_point or index.dim() not in dims:
        shape = f"{index.dtype} {list(index.shape)}" if isinstance(index, Tensor) else type(index).__name__
        kind = "a 1-D [O] or 2-D [B, O]" if per_example else "a 1-D"
        raise ValueError(f"{name}: expected {kind} integer tensor, got {shape}")
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= size):
        raise ValueError(f"{name}: expected values in [0, {size}), got "
                         f"[{int(index.min())}, {int(index.max())}]")


class LearnedPositions(nn.Module):
    """A learned table ``[num_positions, dim]`` (initialised N(0, 0.02))."""

    def __init__(self, num_positions: int, dim: int, init_std: float = 0.02):
        super().__init__()
        self.table = nn.Parameter(torch.randn(num_positions, dim).mul_(init_std))  # one table, not two

    def forward(self, index: Tensor | None = None) -> Tensor:
        """The table, or its ``index`` rows (``[B, n, dim]`` for a 2-D per-example index)."""
        if index is None:
            return self.table
        check_index(index, self.table.shape[0], per_example=True)
        return self.table[index.to(self.table.device)]

    def first(self, length: int) -> Tensor:
        """The first ``length`` rows ``[length, dim]`` (at most the table's) as a slice, not a
        gather: no index to check, a gradient that is a copy, and the whole table unsliced when
        ``length`` is its size (whose gradient a slice would copy)."""
        return self.table if length == self.table.shape[0] else self.table[:length]
