"""The multimodal autoencoding job: reading audio-visual folders, the loss on subsampled queries,
PSNR, and the job end to end from the command line."""

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from perceiver import PerceiverIO
from perceiver.cli import main
from tasks.autoencode import AutoencodeConfig, AutoencodeTask, psnr, read_png, read_wav, shift
from tasks.av_digits import write_wav

SHAPE, RATE, SAMPLES = (8, 8), 8000, 256


def write_folder(root, per_class=(12, 4, 4), classes=("a", "b", "c")):
    """Class k: a bright row k in the image and a tone of 500 (k + 1) Hz."""
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "validation", "test"), per_class, strict=True):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 60, SHAPE).astype(np.uint8)
                pixels[2 * k] = 255
                Image.fromarray(pixels).save(folder / f"{i}.png")
                t = np.arange(SAMPLES - 10 * i) / RATE
                write_wav(folder / f"{i}.wav", 0.5 * np.sin(2 * math.pi * 500 * (k + 1) * t))
    return root


def config(root, **changes):
    return AutoencodeConfig(data=str(root), image_shape=SHAPE, num_samples=SAMPLES, num_workers=1,
                            model=dict(patch_size=2, num_bands=2, query_bands=2, num_latents=8, latent_dim=16,
                                       num_layers=1), **changes)


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "av")


def test_psnr_matches_the_formula():
    target = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    estimate = target + torch.tensor([0.1, 0.01, 0.3], dtype=torch.float64)[:, None, None, None]
    torch.testing.assert_close(psnr(estimate, target), torch.tensor([20.0, 40.0, -20 * math.log10(0.3)],
                                                                    dtype=torch.float64))


def moved(x, offsets):
    """Reference for ``shift``: ``x`` moved by ``offsets`` along its trailing dims, zero-filled."""
    out = torch.zeros_like(x)
    target = [slice(None)] * (x.dim() - len(offsets))
    source = list(target)
    for o, size in zip(offsets, x.shape[-len(offsets):], strict=True):
        target.append(slice(max(o, 0), size + min(o, 0)))
        source.append(slice(max(-o, 0), size - max(o, 0)))
    out[tuple(target)] = x[tuple(source)]
    return out


@pytest.mark.parametrize("shape, dims", [((1, 5, 5), (-2, -1)), ((7,), (-1,))])
def test_shift_moves_each_example_by_its_own_offsets_in_range(shape, dims):
    x = torch.arange(1, 1 + 300 * math.prod(shape)).float().view(300, *shape)
    y = shift(x, 2, dims, torch.Generator().manual_seed(0))
    offsets = [[(a,), (a, b)][len(dims) - 1] for a in range(-2, 3) for b in range(-2, 3)]
    seen = set()
    for original, result in zip(x, y, strict=True):
        matches = [o for o in set(offsets) if torch.equal(result, moved(original, o))]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == len(set(offsets))  # every offset in [-2, 2] occurs
    assert shift(x, 0, dims) is x


def test_folder_is_read_in_class_order_with_short_clips_zero_padded(folder):
    task = AutoencodeTask(config(folder))
    assert task.classes == ["a", "b", "c"] and len(task.splits["train"]) == 36
    row = task.splits["train"][13]  # class b, clip 1: 246 samples, padded to 256
    assert row["label"] == 1 and row["image"][2].min() == 255
    assert np.all(row["audio"][246:] == 0) and np.abs(row["audio"][:246]).max() > 10000
    np.testing.assert_array_equal(row["image"], read_png(folder / "train/b/1.png", SHAPE))


def test_reconstruction_inverts_the_patch_targets(folder):
    """An 'autoencoder' that outputs the per-query targets reconstructs its input exactly."""
    task = AutoencodeTask(config(folder))

    class Echo(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, inputs, modality_mask):
            assert modality_mask["label"].all()
            label = torch.nn.functional.one_hot(inputs["label"], 3)[:, None].float() * 20
            return SimpleNamespace(logits=task.targets(inputs) | {"label": label})

    inputs = task.arrays(task.splits["validation"][:])
    out = task.reconstruct(Echo(), inputs)
    torch.testing.assert_close(out["image"], inputs["image"])
    torch.testing.assert_close(out["audio"], inputs["audio"])
    metrics = task.evaluate(Echo())
    assert metrics["label_accuracy"] == 1.0 and metrics["image_psnr"] == pytest.approx(100.0)


def test_loss_on_subsampled_queries_equals_the_full_decoding_at_those_queries(folder):
    task = AutoencodeTask(config(folder, query_fraction=0.25, label_mask_prob=1.0))
    torch.manual_seed(0)
    model = PerceiverIO(task.model_config()).eval()
    batch = task.train_batch([0, 5, 20], torch.Generator().manual_seed(3))
    assert batch["query_index"]["image"].shape == (3, 4) and batch["query_index"]["audio"].shape == (3, 4)
    assert batch["label_mask"].all()
    _, parts = task.loss(model, batch)
    inputs = batch["inputs"]
    with torch.no_grad():
        full = model(inputs, modality_mask={"label": batch["label_mask"]}).logits
    targets = task.targets(inputs)
    for name in ("image", "audio"):
        rows = torch.arange(3)[:, None]
        index = batch["query_index"][name]
        expected = (full[name][rows, index] - targets[name][rows, index]).pow(2).mean()
        assert parts[f"{name}_mse"] == pytest.approx(float(expected), rel=1e-5)


def test_unreadable_files_are_named_or_skipped_and_counted(folder):
    (folder / "train/a/3.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"1 unreadable record.*train/a/3.png: unreadable image"):
        AutoencodeTask(config(folder))
    write_wav(folder / "validation/c/0.wav", np.zeros(SAMPLES + 1))
    task = AutoencodeTask(config(folder, skip_bad=True))
    assert task.skipped == 2 and len(task.splits["train"]) == 35 and len(task.splits["validation"]) == 11


@pytest.mark.parametrize("problem, message", [
    ("empty", "expected 1 to 256 samples, got 0"),
    ("stereo", "expected 16-bit mono audio at 8000 Hz, got 16-bit, 2 channel"),
    ("rate", "expected 16-bit mono audio at 8000 Hz, got 16-bit, 1 channel.* at 16000 Hz"),
    ("truncated", "unreadable WAV"),
])
def test_bad_audio_is_refused_with_the_file_named(tmp_path, problem, message):
    import wave

    path = tmp_path / "clip.wav"
    with wave.open(str(path), "wb") as f:
        f.setnchannels(2 if problem == "stereo" else 1)
        f.setsampwidth(2)
        f.setframerate(16000 if problem == "rate" else RATE)
        f.writeframes(b"" if problem == "empty" else b"\x01\x00" * 100)
    if problem == "truncated":
        path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match=f"clip.wav: {message}"):
        read_wav(path, RATE, SAMPLES)


def test_wrong_image_size_is_refused(tmp_path):
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "x.png")
    with pytest.raises(ValueError, match="x.png: expected an image of 8x8 pixels, got 9x8"):
        read_png(tmp_path / "x.png", SHAPE)


def test_train_resume_evaluate_predict_from_the_command_line(folder, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["train", "autoencode", "--data", str(folder), "--preset", "tiny", "--output-dir", str(out),
              "--quiet", f"task.image_shape={list(SHAPE)}", f"task.num_samples={SAMPLES}",
              "task.num_workers=1", "task.shift_pixels=1", "task.shift_samples=4",
              "model.patch_size=2", "train.batch_size=8", "train.eval_every=3", "train.save_every=3"]
    assert main(common + ["--max-steps", "3"]) == 0
    assert main(common + ["--max-steps", "6", "--resume"]) == 0
    capsys.readouterr()
    assert json.loads((out / "checkpoint/trainer.json").read_text())["step"] == 6
    assert sorted(p.name for p in (out / "samples").iterdir())[:2] == ["0-a-original.png", "0-a-original.wav"]
    assert main(["evaluate", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out)["test"]
    assert 0 <= metrics["label_accuracy"] <= 1 and metrics["audio_psnr_mean_baseline"] > 0
    for suffix in (".png", ".wav"):  # --sample reads only its files: the data folder may be gone
        shutil.copy(folder / f"test/b/2{suffix}", tmp_path / f"2{suffix}")
    shutil.rmtree(folder)
    sample = str(tmp_path / "2")
    assert main(["predict", str(out), "--sample", sample, "--out", str(tmp_path / "p")]) == 0
    prediction = json.loads(capsys.readouterr().out)
    assert prediction["label"] in ("a", "b", "c") and len(prediction["outputs"]) == 4
    assert ["a", "b", "c"][prediction["label_id"]] == prediction["label"]
    assert read_wav(tmp_path / "p/2-reconstruction.wav", RATE, SAMPLES).shape == (SAMPLES,)
