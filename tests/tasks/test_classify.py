"""The classification job end to end from the command line, on the tiny preset."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import datasets
import torch

import perceiver
from perceiver import tokenizer
from perceiver.cli import main
from tasks.classify import confusion


def test_train_resume_evaluate_predict_on_listops(cache, capsys):
    out = cache / "run"
    assert main(["train", "classify", "--data", "listops", "--preset", "tiny", "--output-dir", str(out),
                 "--quiet", "train.max_steps=10", "train.eval_every=5", "train.save_every=5"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= first["accuracy"] <= 1.0
    assert main(["train", "classify", "--data", "listops", "--preset", "tiny", "--output-dir", str(out),
                 "--quiet", "--resume", "--max-steps", "12", "train.eval_every=5", "train.save_every=5"]) == 0
    assert json.loads((out / "checkpoint/trainer.json").read_text())["step"] == 12
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert sum(map(sum, metrics["test"]["confusion"])) == 64 and metrics["model"] == "best"
    assert isinstance(perceiver.from_pretrained(out), perceiver.PerceiverIO)
    assert main(["predict", str(out), "--text", "[MAX 2 9 [MIN 4 7 ] 0 ]"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["label_id"] <= 9


def test_listops_with_nesting_depth_positions(cache, capsys):
    out = cache / "depth"
    args = ["train", "classify", "--data", "listops", "--preset", "tiny", "--output-dir", str(out), "--quiet",
            "train.max_steps=4", "train.eval_every=4", "train.save_every=4"]
    assert main(args + ['model.depth_brackets="[]"']) == 0
    model = perceiver.from_pretrained(out)
    assert model.input_adapter.config.depth_tokens == tuple(tokenizer.encode("[]"))
    assert model.input_adapter.config.depth_slopes == (0.0, 1.0)  # the tiny preset's 2 heads
    assert main(["predict", str(out), "--text", "[MAX 2 9 [MIN 4 7 ] 0 ]"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out.strip().splitlines()[-1])["label_id"] <= 9
    assert main(args + ["model.depth_brackets=[]"]) == 2  # JSON: an empty list, not the two characters
    assert "depth_brackets: expected two one-byte characters, such as '[]', got []" in capsys.readouterr().err


def test_a_local_dataset_with_other_columns(cache, capsys):
    texts = ["spam spam eggs", "ham and cheese", "eggs spam", "cheese ham"] * 8
    data = datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"body": texts, "y": [i % 2 for i in range(32)]})
        for split in ("train", "validation")})
    data.save_to_disk(str(cache / "data"))
    args = ["train", "classify", "--data", str(cache / "data"), "--preset", "tiny", "--output-dir",
            str(cache / "run"), "--quiet", "train.max_steps=2", "task.text_column=body"]
    assert main(args) == 2
    assert "expected a column 'label' in split 'train', got ['body', 'y']" in capsys.readouterr().err
    assert main(args + ["task.label_column=y"]) == 0
    assert main(["train", "classify", "--data", "listops", "--output-dir", str(cache / "x"),
                 "train.learning_rate=1"]) == 2
    assert "override: unknown key 'train.learning_rate'" in capsys.readouterr().err
    assert main(args + ["task.label_column=y", "model.num_latent=4"]) == 2
    assert "model: unknown setting" in capsys.readouterr().err


def test_bad_records_are_named_or_skipped_and_counted(cache, capsys):
    data = datasets.DatasetDict({split: datasets.Dataset.from_dict({"text": ["ab", "cd"] * 16,
                                                                    "label": [0, 5] * 16})
                                 for split in ("train", "validation")})
    data["train"] = data["train"].map(lambda r, i: {"label": -1 if i == 3 else r["label"],
                                                    "text": " " if i == 6 else r["text"]}, with_indices=True)
    data.save_to_disk(str(cache / "bad"))
    args = ["train", "classify", "--data", str(cache / "bad"), "--output-dir", str(cache / "run"),
            "--quiet", "train.max_steps=1", "train.batch_size=8", "train.num_workers=0"]
    assert main(args) == 2
    assert ("data: 2 bad record(s) in split 'train', first: record 3: label=-1, expected an integer in "
            "[0, 6) (task.skip_bad=true drops them)") in capsys.readouterr().err
    assert main(args + ["task.skip_bad=true"]) == 0
    assert "skipped 2 bad record(s) in split 'train'" in capsys.readouterr().err
    assert json.loads((cache / "run/run.json").read_text())["skipped_records"] == 2


def test_confusion_matrix_counts():
    predicted, labels = torch.tensor([0, 1, 1, 2, 2, 2]), torch.tensor([0, 1, 2, 2, 2, 0])
    assert confusion(predicted, labels, 3).tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 2]]


def test_sigterm_stops_the_command_with_a_checkpoint_and_resume_continues(cache, capsys):
    texts = ["spam spam eggs", "ham and cheese", "eggs spam", "cheese ham"] * 8
    table = datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(32)]})
    datasets.DatasetDict(train=table, validation=table).save_to_disk(str(cache / "data"))
    out = cache / "run"
    args = ["train", "classify", "--data", str(cache / "data"), "--preset", "tiny", "--output-dir", str(out),
            "--quiet", "--save-every", "1000", "train.num_workers=2", "train.log_every=1"]
    env = os.environ | {"PERCEIVER_CACHE": str(cache / "cache"), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "perceiver", *args, "--max-steps", "100000"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "metrics.csv").is_file() or "train" not in (out / "metrics.csv").read_text():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM and "Traceback" not in err
    step = int(re.search(r"stopped by SIGTERM after step (\d+); checkpoint saved", err).group(1))
    assert json.loads((out / "checkpoint/trainer.json").read_text())["step"] == step
    assert json.loads((out / "run.json").read_text())["train"]["save_every"] == 1000
    assert main([*args, "--resume", "--max-steps", str(step + 2)]) == 0
    assert json.loads((out / "checkpoint/trainer.json").read_text())["step"] == step + 2
