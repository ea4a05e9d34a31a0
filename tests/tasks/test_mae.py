"""The mae job: a HiP pre-trained by masked auto-encoding on an audio-visual folder."""

import json

import torch

import perceiver
from perceiver.cli import main
from perceiver.hip import HiP
from tasks.mae import MAEConfig, MAETask
from tests.tasks.test_autoencode import SAMPLES, SHAPE, write_folder


def test_batches_hide_the_ratio_of_each_modality_and_always_the_label(tmp_path):
    task = MAETask(MAEConfig(data=str(write_folder(tmp_path / "av")), image_shape=SHAPE, num_samples=SAMPLES,
                             num_workers=1, mask_ratio=0.25))
    assert task.modalities() == {"image": (64, 1), "audio": (16, 16), "label": (1, 3)}
    batch = task.train_batch([0, 13, 30], torch.Generator().manual_seed(0))
    assert [int(h[0].sum()) for h in batch["hidden"].values()] == [16, 4, 1]
    for name, hide in batch["hidden"].items():
        assert (batch["inputs"][name][hide] == 0).all()
        assert torch.equal(batch["inputs"][name][~hide], batch["targets"][name][~hide])
    assert batch["targets"]["label"][:, 0].argmax(-1).tolist() == [0, 1, 2]


def test_train_resume_evaluate_from_the_command_line(tmp_path, capsys):
    folder, out = write_folder(tmp_path / "av"), tmp_path / "run"
    args = ["train", "mae", "--data", str(folder), "--preset", "tiny", "--output-dir", str(out), "--quiet",
            f"task.image_shape={list(SHAPE)}", f"task.num_samples={SAMPLES}", "task.num_workers=1",
            "train.batch_size=8", "train.eval_every=3", "train.save_every=3"]
    assert main(args + ["--max-steps", "3"]) == 0
    assert main(args + ["--max-steps", "6", "--resume"]) == 0
    model = perceiver.from_pretrained(out)
    assert isinstance(model, HiP) and model.config.channels == (16, 32, 16)  # the tiny preset's HiP
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out)["test"]
    assert set(metrics) == {"image_masked_mse", "audio_masked_mse", "label_masked_mse", "label_accuracy"}
    assert main(["train", "mae", "--data", str(folder), "--model", "perceiver-io", "--output-dir",
                 str(tmp_path / "x"), "--quiet"]) == 2
    assert "the mae job pre-trains a HiP" in capsys.readouterr().err
