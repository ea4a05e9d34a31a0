import json

import pytest
import torch

import perceiver
from perceiver.cli import main


def test_convert_then_info(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    config = transformers.PerceiverConfig(
        num_latents=4, d_latents=16, d_model=8, num_self_attends_per_block=1, num_self_attention_heads=2,
        num_cross_attention_heads=2, max_position_embeddings=16)
    hf = transformers.PerceiverForMaskedLM(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "ours")]) == 0
    ours = perceiver.from_pretrained(tmp_path / "ours")
    ids = torch.randint(0, 262, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(inputs=ids).logits, hf(inputs=ids).logits, atol=1e-5, rtol=1e-4)
    capsys.readouterr()
    assert main(["info", str(tmp_path / "ours")]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["class"] == "PerceiverIO" and described["config"]["input"]["kind"] == "tokens"


def test_convert_an_image_head_then_export_it_back(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.PerceiverConfig(num_latents=4, d_latents=16, num_self_attends_per_block=1,
                                          num_self_attention_heads=2, num_cross_attention_heads=1)
    hf = transformers.PerceiverForImageClassificationConvProcessing(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "ours"), "--image-shape", "20", "24"]) == 0
    assert perceiver.from_pretrained(tmp_path / "ours").config.input.image_shape == (20, 24)
    assert main(["export", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    back = transformers.PerceiverForImageClassificationConvProcessing.from_pretrained(tmp_path / "back")
    pixels = torch.randn(2, 3, 20, 24)
    with torch.no_grad():
        assert torch.equal(back(inputs=pixels).logits, hf(inputs=pixels).logits)


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    assert "expected config.json" in capsys.readouterr().err
