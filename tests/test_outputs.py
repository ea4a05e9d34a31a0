import pytest
import torch
from torch import nn

from perceiver.outputs import (
    AudioSampleOutput,
    ClassificationOutput,
    LinearOutput,
    MultimodalOutput,
    OpticalFlowOutput,
    TiedTokenOutput,
)


def test_classification_squeezes_single_query():
    head = ClassificationOutput(ClassificationOutput.Config(5), query_dim=8)
    assert head(torch.randn(2, 1, 8)).shape == (2, 5)
    assert head(torch.randn(2, 3, 8)).shape == (2, 3, 5)


def test_tied_token_logits():
    head = TiedTokenOutput(TiedTokenOutput.Config(11), query_dim=4)
    adapter = nn.Module()
    adapter.embedding = nn.Embedding(11, 4)
    head.tie_to(adapter)
    nn.init.normal_(head.bias)
    y = torch.randn(2, 3, 4)
    torch.testing.assert_close(head(y), torch.einsum("bod,vd->bov", y, adapter.embedding.weight) + head.bias)
    adapter.embedding = nn.Embedding(12, 4)
    with pytest.raises(ValueError, match="tied_tokens needs an input adapter with an embedding of 11"):
        head.tie_to(adapter)


def test_zero_init_reconstruction_and_flow():
    assert LinearOutput(LinearOutput.Config(3, zero_init=True), 8)(torch.randn(2, 4, 8)).abs().max() == 0
    flow = OpticalFlowOutput(OpticalFlowOutput.Config((2, 3)), 8)
    y = torch.randn(1, 6, 8)
    torch.testing.assert_close(flow(y)[0, 1, 2], flow.linear(y[0, 5]) / 100)


def test_multimodal_output():
    head = MultimodalOutput(MultimodalOutput.Config(modalities={
        "image": LinearOutput.Config(4), "label": ClassificationOutput.Config(3)}), query_dim=6)
    out = head({"image": torch.randn(2, 5, 6), "label": torch.randn(2, 1, 6)})
    assert out["image"].shape == (2, 5, 4) and out["label"].shape == (2, 3)
    with pytest.raises(ValueError, match=r"outputs: unknown modalities \['audio'\]"):
        head({"audio": torch.randn(2, 1, 6)})


def test_shared_projection_then_per_modality_heads():
    head = MultimodalOutput(MultimodalOutput.Config(modalities={
        "audio": AudioSampleOutput.Config(4), "label": ClassificationOutput.Config(3)},
        projection_dim=5), query_dim=6)
    y = {"audio": torch.randn(2, 7, 6), "label": torch.randn(2, 1, 6)}
    out = head(y)
    hidden = y["audio"] @ head.projection.weight.T + head.projection.bias
    audio = head.heads["audio"].linear
    torch.testing.assert_close(out["audio"], (hidden @ audio.weight.T + audio.bias).reshape(2, 28))
    assert out["label"].shape == (2, 3)
