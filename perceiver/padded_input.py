"""An input array whose rows end in a learned vector they share: a multimodal adapter's output,
held as row groups so that the encoder's keys and values never touch the shared part row by row.

``MultimodalAdapter`` pads every modality's features ``[B, M_i, C_i]`` to the common width ``C``
with one learned vector ``[C - C_i]`` (and replaces a masked modality by a learned mask token):
in DeepMind's Kinetics autoencoder 461 of the video's 704 channels are padding. Normalising
and projecting such rows needs the padding only through three per-row numbers and one product
per projection. For ``x = [f | p]``, ``LayerNorm(x) = g * (x - mu) * rstd + b`` and a linear layer
``W`` (bias ``c``), with ``Wg = W * g`` split into its feature and padding columns:

    W LayerNorm(x) + c = rstd * ((f - mu) @ Wg_f^T + Wg_p @ p - mu * rowsum(Wg_p)) + (W b + c)

where ``mu`` and ``rstd`` follow from the row statistics of ``f`` and those of ``p``. The matmul
runs over ``C_i`` channels instead of ``C``, and the features ``f`` carry no gradient when they
are data, so the backward pass skips the ``[M, D] x [D, C]`` product for the input's gradient that
only the padding would need (its gradient comes from per-row sums instead). The result is that of
the padded array's layer norm and projections, up to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class PaddedInput:
    """``x [B, M, C]`` as row groups ``(features [B, M_i, C_i], pad [C - C_i])``: group ``i`` holds
    the rows ``[features | pad]`` (``C_i`` may be 0, a row of only the learned vector, or ``C``)."""

    groups: tuple[tuple[Tensor, Tensor], ...]

    @classmethod
    def whole(cls, x: Tensor) -> PaddedInput:
        """``x [B, M, C]`` as one group with no learned vector."""
        return cls(((x, x.new_zeros(0)),))

    @property
    def shape(self) -> torch.Size:
        f, p = self.groups[0]
        return torch.Size((f.shape[0], sum(g[0].shape[1] for g in self.groups), f.shape[2] + p.shape[0]))

    @property
    def dtype(self) -> torch.dtype:
        return self.groups[0][0].dtype

    @property
    def device(self) -> torch.device:
        return self.groups[0][0].device

    def materialise(self) -> Tensor:
        rows = [torch.cat([f, p.to(f.dtype).expand(*f.shape[:2], -1)], dim=-1) for f, p in self.groups]
        return torch.cat(rows, dim=1)

    def to(self, dtype: torch.dtype) -> PaddedInput:
        return PaddedInput(tuple((f.to(dtype), p.to(dtype)) for f, p in self.groups))

    def normalised_projections(self, norm: nn.LayerNorm, *projections: nn.Linear) -> list[Tensor]:
        """``[proj(norm(self.materialise())) for proj in projections]``, each ``[B, M, D]``, computed
        group by group without the padded rows (see the module docstring)."""
        width = self.shape[-1]
        if tuple(norm.normalized_shape) != (width,):
            raise ValueError(f"norm: expected a LayerNorm over {width} channels, "
                             f"got one over {tuple(norm.normalized_shape)}")
        statistics = [row_statistics(f, p, norm.eps) for f, p in self.groups]
        outputs = []
        for proj in projections:
            weight = proj.weight if norm.weight is None else proj.weight * norm.weight
            shift = proj.bias if norm.bias is None else proj.weight @ norm.bias + _or_zero(proj.bias)
            parts = []
            for (f, p), (mu, rstd, rows) in zip(self.groups, statistics, strict=True):
                mu0, split = mu.detach(), f.shape[-1]
                wf, wp = weight[:, :split], weight[:, split:]
                channels = torch.stack([wp @ p.to(wp.dtype), wf.sum(dim=1), wp.sum(dim=1)])
                y = torch.matmul(rows, channels.to(rows.dtype)) + _or_zero(shift)
                if split:  # rstd * (f - mu0) @ wf^T: f centred on a detached mean stays constant
                    centred = F.linear(f - mu0[..., None].to(f.dtype), wf)
                    y = torch.addcmul(y, rstd[..., None], centred)
                parts.append(y)
            outputs.append(parts)
        kind = self.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else self.dtype
        return [torch.cat(parts, dim=1).to(dtype) for parts in outputs]


def row_statistics(f: Tensor, p: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Mean and ``1 / sqrt(var + eps)`` ``[B, M_i]`` of the rows ``[f | p]``, from each part's own
    mean and sum of squared deviations (no cancellation between large means), and each row's
    factors ``[B, M_i, 3]`` of what it shares with every other: ``rstd, -rstd (mu - mu0),
    -rstd mu`` (``mu0`` the detached mean: the second is zero, there for the mean's gradient).
    ``normalised_projections`` weighs them with ``W p``, ``rowsum(W_f)``, ``rowsum(W_p)``;
    ``absorbed_attention`` takes them as columns of its rows."""
    n_f, n_p = f.shape[-1], p.shape[0]
    dtype = torch.promote_types(f.dtype, torch.float32)  # statistics in at least float32
    f, p = f.to(dtype), p.to(dtype)
    if f.numel():
        var_f, mean_f = _var_mean(f)
    else:
        var_f = mean_f = f.new_zeros(f.shape[:2])
    mean_p = p.mean() if n_p else p.new_zeros(())
    sq_p = (p - mean_p).square().sum() if n_p else p.new_zeros(())
    mu = (n_f * mean_f + n_p * mean_p) / (n_f + n_p)
    var = (n_f * var_f + n_f * (mean_f - mu).square() + sq_p + n_p * (mean_p - mu).square()) / (n_f + n_p)
    rstd = torch.rsqrt(var + eps)
    factors = torch.stack([rstd, -rstd * (mu - mu.detach()), -rstd * mu], dim=-1)
    return mu, rstd, factors


def _var_mean(f: Tensor, block_rows: int = 4096) -> tuple[Tensor, Tensor]:
    """``torch.var_mean(f, dim=-1, correction=0)``; where ``f`` needs no gradient (data features),
    two exact passes over blocks of rows that stay in cache. torch's kernel updates a running
    variance per element: 37-39 ms for Kinetics' 50,176 x 243 video rows, against 4 ms here."""
    if f.requires_grad and torch.is_grad_enabled():
        return torch.var_mean(f, dim=-1, correction=0)
    rows = f.reshape(-1, f.shape[-1])
    mean = rows.mean(-1)
    var = torch.empty_like(mean)
    for start in range(0, rows.shape[0], block_rows):
        block = slice(start, start + block_rows)
        torch.sum((rows[block] - mean[block, None]).square_(), -1, out=var[block])
    return var.div_(f.shape[-1]).view(f.shape[:-1]), mean.view(f.shape[:-1])


def _or_zero(x: Tensor | None) -> Tensor | float:
    return 0.0 if x is None else x
