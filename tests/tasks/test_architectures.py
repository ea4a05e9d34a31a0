"""The byte jobs with a HiP (--model hip-...): end to end on tiny settings, and the padding rules."""

import json

import pytest
import torch

import perceiver
from perceiver.cli import main
from perceiver.hip import HiP, HiPClassBottleneck
from tasks import architectures, recipes

TINY_HIP = [f"model.{key}={json.dumps(value)}" for key, value in recipes.TINY_HIP.items()]


def test_classify_with_a_hip_trains_resumes_evaluates_and_predicts(cache, capsys):
    out = cache / "run"
    args = ["train", "classify", "--data", "listops", "--preset", "tiny", "--model", "hip-mini",
            "--output-dir", str(out), "--quiet", "train.eval_every=2", "train.save_every=2"]  # TINY_HIP
    assert main(args + ["--max-steps", "2"]) == 0
    assert main(args + ["--max-steps", "4", "--resume"]) == 0
    model = perceiver.from_pretrained(out)
    assert isinstance(model, HiPClassBottleneck) and model.config.modalities["bytes"] == (512, 262)
    assert model.config.channels == recipes.TINY_HIP["channels"]  # the tiny preset stays tiny
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    assert sum(map(sum, json.loads(capsys.readouterr().out)["test"]["confusion"])) == 64
    assert main(["predict", str(out), "--text", "[MAX29[MIN47]0]"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["label_id"] <= 9


def test_mlm_with_a_hip_fills_masked_bytes(tmp_path, capsys):
    corpus = tmp_path / "text.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 60)
    out = tmp_path / "run"
    assert main(["train", "mlm", "--data", str(corpus), "--preset", "tiny", "--model", "hip-mini",
                 "--output-dir", str(out), "--quiet", "--max-steps", "3", *TINY_HIP]) == 0
    assert isinstance(perceiver.from_pretrained(out), HiP)
    capsys.readouterr()
    assert main(["predict", str(out), "--text", "the quick ___"]) == 0
    filled = json.loads(capsys.readouterr().out)["filled"]
    assert len(filled) == len("the quick ___") and "_" not in filled


def test_hip_logits_do_not_depend_on_the_padding_of_other_examples():
    tiny = dict(num_groups=(4, 1, 4), num_latents=(4, 4, 4), channels=(8, 16, 8), num_self_layers=(1, 1, 1),
                num_self_heads=(2, 2, 2), embedding_channels=8)
    config = architectures.byte_classifier("hip-mini", 3, 32, tiny)
    torch.manual_seed(0)
    model = perceiver.config.build(config).eval()
    for linear in model.label_unembed.values():
        torch.nn.init.normal_(linear.weight)
    ids = torch.randint(6, 262, (2, 30))
    ids[0, 20:] = 0  # a 20-byte text batched with a 30-byte one: [PAD] after it
    mask = (ids != 0).long()
    together = architectures.classifier_logits("hip-mini", model, ids, mask, 3)
    alone = architectures.classifier_logits("hip-mini", model, ids[:1, :20], mask[:1, :20], 3)
    torch.testing.assert_close(together[:1], alone)
    with pytest.raises(ValueError, match="inputs: expected at most 32 bytes, got 40"):
        architectures.classifier_logits("hip-mini", model, torch.ones(1, 40, dtype=torch.long), mask, 3)


def test_model_choice_is_checked(cache, capsys):
    assert main(["train", "classify", "--data", "listops", "--model", "hip-9", "--output-dir",
                 str(cache / "r"), "--quiet"]) == 2
    assert "--model: expected one of" in capsys.readouterr().err
    assert main(["train", "autoencode", "--data", "av-digits", "--model", "hip-mini", "--output-dir",
                 str(cache / "r"), "--quiet"]) == 2
    assert "--model: the autoencode job has one architecture" in capsys.readouterr().err
