"""Shared helpers for the transformers interop tests: random models, padded batches, errors."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

ERRORS = []  # every relative error measured (benchmarks/equivalence.py reports the largest)


def hf_config(**overrides):
    base = dict(num_latents=12, d_latents=32, d_model=24, num_blocks=1, num_self_attends_per_block=2,
                max_position_embeddings=48, num_labels=5, attention_probs_dropout_prob=0.0,
                num_cross_attention_heads=1, num_self_attention_heads=2)
    return transformers.PerceiverConfig(**(base | overrides))


@torch.no_grad()
def randomized(model):
    """Perturb every weight (LayerNorms and BatchNorm statistics included, which initialise to
    constants and would hide a swapped key) and return the model in eval mode."""
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.1)
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.normal_()
        elif name.endswith("running_var"):
            b.uniform_(0.5, 2.0)
    return model.eval()


def relative_error(a, b) -> float:
    """Largest absolute difference relative to the largest absolute logit."""
    assert a.shape == b.shape, (a.shape, b.shape)
    error = float((a - b).abs().max() / a.abs().max())
    ERRORS.append(error)
    return error


def padding_mask(batch: int, length: int) -> torch.Tensor:
    """1 keep / 0 pad, with different amounts of padding per example (never a fully padded row)."""
    mask = torch.ones(batch, length, dtype=torch.long)
    for i in range(1, batch):
        mask[i, max(1, length * (batch - i) // (batch + 1)):] = 0
    return mask
