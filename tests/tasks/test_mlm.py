"""The masked-LM job: masking, decoding only the masked positions, and the job end to end."""

import json
import re

import pytest
import torch

from perceiver import PerceiverIO, tokenizer
from perceiver.cli import main
from tasks.mlm import MLMConfig, MLMTask, mask_positions


def test_mask_positions_chooses_count_positions_and_corrupts_bert_style():
    ids = torch.randint(tokenizer.OFFSET, tokenizer.VOCAB_SIZE, (400, 50))
    inputs, positions, labels = mask_positions(ids, 8, torch.Generator().manual_seed(0))
    assert positions.shape == labels.shape == (400, 8)
    assert (positions.diff(dim=1) > 0).all()  # sorted, distinct
    torch.testing.assert_close(labels, ids.gather(1, positions))
    untouched = torch.ones_like(ids, dtype=torch.bool).scatter(1, positions, False)
    assert torch.equal(inputs[untouched], ids[untouched])
    at = inputs.gather(1, positions)
    masked, kept = (at == tokenizer.MASK).float().mean(), (at == labels).float().mean()
    assert 0.77 < masked < 0.83 and 0.08 < kept < 0.13  # 80% [MASK]; 10% kept (+ random hits)
    with pytest.raises(ValueError, match="count: expected 1..50 positions per example, got 51"):
        mask_positions(ids, 51)


def test_whole_word_masking_takes_whole_words_with_an_exact_count():
    texts = ["the quick brown fox jumps over the lazy dog, again and again",
             "a  bb\tccc\ndddd eeeee ffffff gg hhh"]
    ids = torch.tensor([tokenizer.encode(t[:32]) for t in texts])
    for seed in range(20):
        _, positions, labels = mask_positions(ids, 9, torch.Generator().manual_seed(seed), whole_words=True)
        torch.testing.assert_close(labels, ids.gather(1, positions))
        for row, text in enumerate(texts):
            chosen = set(positions[row].tolist())
            assert len(chosen) == 9 and not any(text[i].isspace() for i in chosen)
            words = [range(m.start(), m.end()) for m in re.finditer(r"\S+", text[:32])]
            partial = [w for w in words if 0 < len(chosen.intersection(w)) < len(w)]
            assert len(partial) <= 1  # only the last word chosen may be cut
            for word in partial:  # and it is cut at its end: its first bytes are taken
                taken = sorted(chosen.intersection(word))
                assert taken == list(word)[:len(taken)]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 60, encoding="utf-8")
    return path


def test_decoding_masked_positions_only_gives_the_full_decoding_loss(corpus):
    losses = []
    for decode in ("masked", "all"):
        task = MLMTask(MLMConfig(data=str(corpus), seq_len=32, decode=decode,
                                 model=dict(dim=16, num_latents=4, latent_dim=16, num_layers=1, num_heads=2)))
        torch.manual_seed(0)
        model = PerceiverIO(task.model_config()).eval()
        loss, _ = task.loss(model, task.train_batch([0, 3, 5], torch.Generator().manual_seed(1)))
        losses.append(loss)
    torch.testing.assert_close(losses[0], losses[1])


def test_train_resume_evaluate_fill_mask_from_the_command_line(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "mlm", "--data", str(corpus), "--preset", "tiny", "--output-dir", str(out), "--quiet",
            "train.max_steps=6", "train.eval_every=3", "train.save_every=3", "task.masking=words"]
    assert main(args + ["--max-steps", "3"]) == 0
    assert main(args + ["--resume"]) == 0
    assert json.loads((out / "checkpoint/trainer.json").read_text())["step"] == 6
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out)["validation"]
    assert 0 <= metrics["masked_accuracy"] <= 1 and metrics["bits_per_byte"] > 0
    assert metrics["unigram_bits_per_byte"] < 8  # 27 distinct bytes in the text
    assert main(["predict", str(out), "--text", "the quick brown ___ jumps"]) == 0
    filled = json.loads(capsys.readouterr().out)["filled"]
    assert len(filled) == len("the quick brown ___ jumps") and "_" not in filled


def test_bad_files_are_named_or_skipped_and_counted(tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "bad.txt").write_bytes(b"caf\xe9 " * 100)
    (docs / "empty.txt").write_text(" \n")
    (docs / "good.txt").write_text("a perfectly good sentence. " * 40)
    args = ["train", "mlm", "--data", str(docs), "--output-dir", str(tmp_path / "r"), "--quiet",
            "train.max_steps=1", "train.num_workers=0", "train.batch_size=4"]
    assert main(args) == 2
    assert "bad.txt is not valid UTF-8" in capsys.readouterr().err
    (docs / "bad.txt").unlink()
    assert main(args) == 2
    assert "empty.txt is empty (task.skip_bad=true skips it)" in capsys.readouterr().err
    (docs / "bad.txt").write_bytes(b"caf\xe9 " * 100)
    assert main(args + ["task.skip_bad=true"]) == 0
    assert "skipped 2 unreadable or empty file(s)" in capsys.readouterr().err
    assert json.loads((tmp_path / "r/run.json").read_text())["skipped_records"] == 2
