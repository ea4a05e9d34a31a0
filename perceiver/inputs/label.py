"""Label input: class ids (or class probabilities) as one one-hot element."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from perceiver.config import register
from perceiver.inputs.base import check_size, check_tensor


@register("one_hot")
class OneHotLabelAdapter(nn.Module):
    """Labels ``[B]`` (int) or ``[B, num_classes]`` (float) -> one element ``[B, 1, num_classes]``."""

    @dataclass
    class Config:
        num_classes: int = 10

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.output_dim = config.num_classes
        self.num_positions = 1

    def forward(self, inputs: Tensor, attention_mask: Tensor | None = None):
        check_tensor("inputs", inputs, (1, 2))
        n = self.config.num_classes
        if inputs.dim() == 1:
            check_tensor("inputs", inputs, 1, floating=False)
            if inputs.numel() and (int(inputs.min()) < 0 or int(inputs.max()) >= n):
                raise ValueError(f"inputs: expected class ids in [0, {n}), got "
                                 f"[{int(inputs.min())}, {int(inputs.max())}]")
            x = F.one_hot(inputs.long(), n).float()
        else:
            check_tensor("inputs", inputs, 2, floating=True)
            check_size("inputs", inputs.shape[1:], (n,), "shape [B, num_classes] ending in")
            x = inputs
        return x[:, None, :], attention_mask
