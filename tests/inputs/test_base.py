"""The shared input checks: run eagerly, and without importing torch._dynamo until compile does
(torch.compile of a multimodal model through them: tests/test_padded_input.py)."""

import subprocess
import sys

import pytest
import torch

from perceiver.inputs.base import check_tensor

UNCOMPILED_USE = """
import sys
import torch
from perceiver import PerceiverIO, presets
model = PerceiverIO(presets.byte_classifier(num_classes=3, max_seq_len=16, dim=8, num_latents=4,
                                            latent_dim=8, num_layers=1, num_heads=2))
model(torch.randint(0, 262, (2, 16))).logits.sum().backward()
from perceiver.inputs.base import check_tensor
try:
    check_tensor("x", torch.tensor([[float("nan")]]), 2, floating=True)
except ValueError as error:
    print("raised:", error)
print("dynamo imported:", "torch._dynamo" in sys.modules)
"""


def test_an_uncompiled_model_never_imports_dynamo():
    """``torch.compiler.disable`` would import torch._dynamo (0.8 s, ~120 MB) with the package."""
    done = subprocess.run([sys.executable, "-c", UNCOMPILED_USE], capture_output=True, text=True,
                          check=True)
    assert "raised: x: expected finite values, got 1 NaN" in done.stdout
    assert "dynamo imported: False" in done.stdout


@pytest.mark.parametrize("value, message", [
    ([1.0], "expected a tensor, got list"),
    (torch.zeros(2), "expected a 2 or 3-D tensor, got shape [2]"),
    (torch.zeros(2, 2, dtype=torch.long), "expected a floating-point tensor, got torch.int64"),
    (torch.tensor([[1.0, float("inf")]]), "expected finite values, got 1 NaN or infinite"),
    (torch.tensor([[1e19]]), "expected magnitudes up to 1e+18"),
])
def test_bad_values_are_named(value, message):
    with pytest.raises(ValueError, match=f"^v: {message}".replace("[", r"\[").replace("+", r"\+")):
        check_tensor("v", value, (2, 3), floating=True)


def test_good_values_pass_and_integers_are_told_apart():
    check_tensor("v", torch.randn(2, 3), (2, 3), floating=True)
    check_tensor("ids", torch.zeros(2, 3, dtype=torch.long), 2, floating=False)
    with pytest.raises(ValueError, match="^ids: expected an integer tensor, got torch.bool"):
        check_tensor("ids", torch.zeros(2, 3, dtype=torch.bool), 2, floating=False)
