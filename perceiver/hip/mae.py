"""Masked auto-encoding, HiP's pre-training: hide a share of each modality's elements (set them to
zero; the model has no mask token) and reconstruct them. It is what trains the position tables,
which are both the inputs' positions and the decoder's queries.

    masked, hidden = mask_elements(inputs, ratio, generator)   # hidden: {name: [B, M] bool}
    loss = masked_loss(model(masked).logits, inputs, hidden)    # MSE on the hidden elements
"""

from __future__ import annotations

import torch
from torch import Tensor


def mask_elements(inputs: dict[str, Tensor], ratio: float, generator: torch.Generator | None = None
                  ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Zero ``round(ratio * M)`` random elements (all channels) of each example and modality."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio: expected a share in (0, 1), got {ratio}")
    masked, hidden = {}, {}
    for name, x in inputs.items():
        count = max(1, round(ratio * x.shape[1]))
        scores = torch.rand(x.shape[:2], generator=generator).to(x.device)
        chosen = scores.argsort(1)[:, :count]
        hide = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device).scatter(1, chosen, True)
        masked[name] = x.masked_fill(hide[..., None], 0.0)
        hidden[name] = hide
    return masked, hidden


def masked_loss(outputs: dict[str, Tensor], targets: dict[str, Tensor], hidden: dict[str, Tensor]) -> Tensor:
    """Mean over modalities of the MSE on each modality's hidden elements."""
    losses = [(outputs[n].float() - targets[n].float()).square()[hidden[n]].mean() for n in hidden]
    return torch.stack(losses).mean()
