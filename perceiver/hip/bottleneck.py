"""HiP with a class bottleneck: label modalities skip the encoder and enter at the processor.

Each label modality (e.g. a class one-hot ``[B, 1, K]``) has its own embedding to the processor's
input width and its own learned position table; its tokens are appended to the latents entering
the processor, and a label head (the label tables as queries, one cross-attention over the
processor's output, a zero-initialised linear per label) reads them out there. The other
modalities are encoded, processed and reconstructed as in ``HiP``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from perceiver.config import register
from perceiver.hip.blocks import regroup
from perceiver.hip.model import HiP, truncated_normal_
from perceiver.layers import CrossAttentionLayer


@register("hip_class_bottleneck")
class HiPClassBottleneck(HiP):
    """``forward(inputs)`` with any subset of modalities, at least one of them not a label."""

    @dataclass
    class Config(HiP.Config):
        label_modalities: tuple = ()

    def __init__(self, config: Config):
        self.label_names = [n for n in config.modalities if n in config.label_modalities]
        others = {n: s for n, s in config.modalities.items() if n not in self.label_names}
        if not others:
            raise ValueError(f"label_modalities: expected at least one modality that is not a label, got "
                             f"labels {self.label_names} only")
        fields = {k: v for k, v in vars(config).items() if k != "label_modalities"}
        super().__init__(HiP.Config(**{**fields, "modalities": others}))
        self.config = config
        self.label_sizes = {n: tuple(config.modalities[n]) for n in self.label_names}
        width_in = config.channels[self.processor - 1]
        width = config.channels[self.processor]
        sizes = self.label_sizes.items()
        self.label_embed = nn.ModuleDict({n: nn.Linear(d, width_in) for n, (_, d) in sizes})
        self.label_positions = nn.ParameterDict({n: nn.Parameter(torch.empty(m, width_in))
                                                 for n, (m, _) in sizes})
        self.label_head = CrossAttentionLayer(width_in, width, 1, qk_dim=width, v_dim=width,
                                              widening_factor=1, query_residual=False, activation="relu2")
        self.label_unembed = nn.ModuleDict({n: nn.Linear(width_in, d) for n, (_, d) in sizes})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for table in getattr(self, "label_positions", {}).values():
            truncated_normal_(table, table.shape[0])
        for linear in getattr(self, "label_unembed", {}).values():
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def encoded(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        if not isinstance(inputs, dict):
            raise ValueError(f"inputs: expected a dict of tensors, got {type(inputs).__name__}")
        for name, x in self.labels(inputs).items():
            length, channels = self.label_sizes[name]
            if not isinstance(x, Tensor) or x.dim() != 3 or tuple(x.shape[1:]) != (length, channels):
                shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"inputs[{name!r}]: expected shape [B, {length}, {channels}], got {shape}")
        return {n: x for n, x in inputs.items() if n not in self.label_sizes}

    def labels(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        return {n: x for n, x in inputs.items() if n in self.label_sizes}

    def enter_processor(self, z: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """The label tokens appended to the latents entering the processor: ``[B, 1, N + L, C]``."""
        labels = self.labels(inputs)
        if not labels:
            return z
        tokens = [self.label_embed[n](x) + self.label_positions[n].to(x.dtype) for n, x in labels.items()]
        return torch.cat([regroup(z, 1), torch.cat(tokens, dim=1)[:, None]], dim=2)

    def leave_processor(self, z: Tensor, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Each given label modality read out of the processor's output ``z [B, 1, N, C]``."""
        out = {}
        for name, x in self.labels(inputs).items():
            q = self.label_positions[name].to(z.dtype).expand(x.shape[0], -1, -1)
            out[name] = self.label_unembed[name](self.label_head(q, z[:, 0]))
        return out
