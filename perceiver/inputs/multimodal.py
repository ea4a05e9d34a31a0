"""Several modalities in one input array.

Each modality has its own adapter giving ``[B, M_i, C_i]``; each is padded to a common width
``C = max_i C_i + min_padding`` with a learned per-modality vector, and the results are concatenated
along M in sorted modality-name order (as DeepMind's code and transformers do). A modality that
is left out of ``inputs``, or masked per example by ``modality_mask``, is replaced by a learned
per-modality mask token (e.g. the label, which the model must then infer from the other modalities).
``mask_probs`` replaces each element of a modality by its mask token with that probability, in
training and evaluation alike, as DeepMind's code does (its Kinetics autoencoder masks the label
with probability 1 so that the label is always inferred).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from perceiver.config import build, register
from perceiver.inputs.base import check_size
from perceiver.padded_input import PaddedInput


@register("multimodal")
class MultimodalAdapter(nn.Module):
    """``inputs={name: tensor}`` -> ``[B, sum_i M_i, C]`` in sorted-name order."""

    @dataclass
    class Config:
        modalities: dict = field(default_factory=dict)  # name -> adapter config
        min_padding: int = 2
        mask_probs: dict = field(default_factory=dict)  # name -> probability of masking an element

    def __init__(self, config: Config):
        super().__init__()
        if not config.modalities:
            raise ValueError("modalities: expected at least one modality, got none")
        for name, p in config.mask_probs.items():
            if name not in config.modalities or not 0.0 <= p <= 1.0:
                raise ValueError(f"mask_probs: expected probabilities in [0, 1] for modalities among "
                                 f"{sorted(config.modalities)}, got {name!r}: {p!r}")
        self.config = config
        self.names = sorted(config.modalities)
        self.adapters = nn.ModuleDict({n: build(config.modalities[n]) for n in self.names})
        self.output_dim = max(a.output_dim for a in self.adapters.values()) + config.min_padding
        self.padding = nn.ParameterDict({
            n: nn.Parameter(torch.randn(self.output_dim - a.output_dim) * 0.02)
            for n, a in self.adapters.items()
        })
        self.mask_tokens = nn.ParameterDict({
            n: nn.Parameter(torch.randn(self.output_dim) * 0.02) for n in self.names
        })

    def modality_sizes(self) -> dict[str, int]:
        """``{name: M_i}`` in concatenation order (for adapters with a fixed length)."""
        return {n: getattr(self.adapters[n], "num_positions", None) for n in self.names}

    def forward(
        self,
        inputs: dict[str, Tensor],
        attention_mask: Tensor | None = None,
        modality_mask: dict[str, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """``x [B, sum_i M_i, C]`` and the attention mask, checked against it."""
        x, attention_mask = self.padded(inputs, attention_mask, modality_mask)
        return x.materialise(), attention_mask

    def padded(
        self,
        inputs: dict[str, Tensor],
        attention_mask: Tensor | None = None,
        modality_mask: dict[str, Tensor] | None = None,
    ) -> tuple[PaddedInput, Tensor | None]:
        """``forward``, with ``x`` as a ``PaddedInput``: per modality its features and the learned
        vector that pads them (its mask token alone where every element is masked; the padded rows
        where only some are), which the encoder projects without building the padded rows."""
        if not isinstance(inputs, dict):
            raise ValueError(f"inputs: expected a dict of {self.names}, got {type(inputs).__name__}")
        if modality_mask is not None and not isinstance(modality_mask, dict):
            raise ValueError(f"modality_mask: expected a dict {{modality: [B] bool}} with modalities among "
                             f"{self.names}, got {type(modality_mask).__name__}")
        modality_mask = dict(modality_mask or {})
        for where, names in (("inputs", inputs), ("modality_mask", modality_mask)):
            unknown = sorted(set(names) - set(self.names))
            if unknown:
                raise ValueError(f"{where}: unknown modalities {unknown}, expected among {self.names}")
        present = [inputs[n] for n in self.names if n in inputs]
        if not present:
            raise ValueError(f"inputs: expected at least one of {self.names}, got none")
        batch = present[0].shape[0]
        dtype = present[0].dtype if present[0].dtype.is_floating_point else None
        groups = []
        for name in self.names:
            adapter, token = self.adapters[name], self.mask_tokens[name]
            if name in inputs:
                x, _ = adapter(inputs[name])
                check_size(f"inputs[{name!r}]", x.shape[:1], (batch,), "batch size")
                group = (x, self.padding[name].to(x.dtype))
            else:
                length = getattr(adapter, "num_positions", None)
                if length is None:
                    raise ValueError(f"inputs: modality {name!r} is missing and its length is not fixed")
                group = _masked(token, batch, length, dtype)
            if name in modality_mask:
                masked = modality_mask[name]
                check_size(f"modality_mask[{name!r}]", masked.shape, (batch,), "shape")
                x = _rows(group)
                group = _whole(torch.where(masked.bool()[:, None, None], token.to(x.dtype), x))
            p = self.config.mask_probs.get(name, 0.0)
            if p > 0:
                x = _rows(group)
                masked = torch.rand(x.shape[:2], device=x.device) < p
                if p >= 1.0:  # every element: the mask token alone
                    group = _masked(token, batch, x.shape[1], x.dtype)
                else:
                    group = _whole(torch.where(masked[..., None], token.to(x.dtype), x))
            groups.append(group)
        x = PaddedInput(tuple(groups))
        if attention_mask is not None:
            check_size("attention_mask", attention_mask.shape, x.shape[:2], "shape [B, M]")
        return x, attention_mask


def _rows(group: tuple[Tensor, Tensor]) -> Tensor:
    """A ``PaddedInput`` group's padded rows ``[B, M_i, C]``."""
    return PaddedInput((group,)).materialise()


def _whole(x: Tensor) -> tuple[Tensor, Tensor]:
    """Rows ``[B, M_i, C]`` as a group with nothing shared."""
    return x, x.new_zeros(0)


def _masked(token: Tensor, batch: int, length: int, dtype: torch.dtype | None) -> tuple[Tensor, Tensor]:
    """``length`` rows of the mask token alone, as a group."""
    token = token if dtype is None else token.to(dtype)
    return token.new_zeros(batch, length, 0), token
