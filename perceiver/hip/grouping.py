"""Splitting several modalities' tokens into HiP's input groups, and the exact inverse.

The ``G`` groups are shared out among the modalities present, in order: one group each first
(so there can be no more modalities than groups), then one at a time to the modality with the
most tokens per group (the first on a tie). A modality of ``M`` tokens in ``k`` groups is
zero-padded at the end to ``k * ceil(M / k)`` tokens and cut into ``k`` contiguous groups; every
group is then zero-padded at the end to the longest, ``P = max ceil(M_m / k_m)``, and the groups
are stacked: ``{name: [B, M_m, E]} -> [B, G, P, E]``. Padded tokens are exact zeros; no attention
mask is used (DeepMind's HiP does the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def allocate_groups(lengths: dict[str, int], num_groups: int) -> dict[str, int]:
    """Groups per modality, in the order of ``lengths``."""
    if len(lengths) > num_groups:
        raise ValueError(f"inputs: expected at most num_groups={num_groups} modalities, got "
                         f"{len(lengths)} ({list(lengths)})")
    for name, length in lengths.items():
        if length < 1:
            raise ValueError(f"inputs[{name!r}]: expected at least one token, got {length}")
    counts = dict.fromkeys(lengths, 1)
    for _ in range(num_groups - len(lengths)):
        fullest = max(lengths, key=lambda n: lengths[n] / counts[n])  # max keeps the first on ties
        counts[fullest] += 1
    return counts


def pad_rows(x: Tensor, rows: int, dim: int = 1) -> Tensor:
    """``x`` zero-padded at the end of ``dim`` to ``rows`` (``x`` itself when it has as many)."""
    missing = rows - x.shape[dim]
    if missing == 0:
        return x
    return torch.nn.functional.pad(x, (0, 0) * (x.dim() - 1 - dim) + (0, missing))


@dataclass(frozen=True)
class GroupLayout:
    """Where each modality's tokens sit in the ``[B, G, P, E]`` grouped array."""

    lengths: dict[str, int]  # tokens per modality
    groups: dict[str, int]  # groups per modality
    group_size: int  # P

    @classmethod
    def plan(cls, lengths: dict[str, int], num_groups: int) -> GroupLayout:
        groups = allocate_groups(lengths, num_groups)
        return cls(dict(lengths), groups, max(math.ceil(lengths[n] / groups[n]) for n in lengths))

    def group(self, tokens: dict[str, Tensor]) -> Tensor:
        """``{name: [B, M, E]} -> [B, G, P, E]`` (a view of one modality's tokens that need no padding:
        at a million tokens each copy costs about as much as a layer norm)."""
        parts = []
        for name, k in self.groups.items():
            per_group = math.ceil(self.lengths[name] / k)
            x = pad_rows(tokens[name], k * per_group).unflatten(1, (k, per_group))
            parts.append(pad_rows(x, self.group_size, dim=2))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def ungroup(self, grouped: Tensor) -> dict[str, Tensor]:
        """``[B, G, P, C] -> {name: [B, M, C]}`` (padding dropped)."""
        out, start = {}, 0
        for name, k in self.groups.items():
            per_group = math.ceil(self.lengths[name] / k)
            x = grouped[:, start:start + k, :per_group].flatten(1, 2)
            out[name] = x[:, :self.lengths[name]]
            start += k
        return out
