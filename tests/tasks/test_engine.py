import csv
import dataclasses
import json
import math
import os
import signal

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from perceiver import presets
from tasks.engine import Stopped, TrainConfig, learning_rate, train
from tasks.state import find_checkpoint, save_checkpoint


class CountTask:
    """Is token 7 in the sequence? A small synthetic job; dropout makes the RNG matter."""

    best_metric = "accuracy"

    def __init__(self, crash_at=None, nan_at=(), signals=(), nan_grad_at=()):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(6, 16, (96, 24), generator=g)
        self.labels = (self.ids == 7).any(-1).long()
        self.crash_at, self.calls = crash_at, 0
        self.nan_at = {nan_at} if isinstance(nan_at, int) else set(nan_at)
        self.nan_grad_at, self.signals = set(nan_grad_at), dict(signals)  # call -> signal to send
        self.weights = {}  # call -> a copy of the weights when it began

    def model_config(self):
        config = presets.byte_classifier(num_classes=2, max_seq_len=24, dim=16, num_latents=4, latent_dim=32,
                                         num_layers=1, num_heads=2)
        config.encoder.dropout = config.decoder.dropout = 0.1
        return config

    def num_train_examples(self):
        return 64

    def train_batch(self, indices, generator):
        noise = torch.rand(len(indices), generator=generator)  # the per-batch generator's draws
        return {"inputs": self.ids[indices], "labels": self.labels[indices], "noise": noise}

    def loss(self, model, batch):
        self.calls += 1
        if self.calls == self.crash_at:
            raise KeyboardInterrupt("simulated crash")
        if self.calls in self.signals:
            os.kill(os.getpid(), self.signals[self.calls])
        self.weights[self.calls] = torch.cat([p.detach().flatten() for p in model.parameters()])
        logits = model(batch["inputs"]).logits + batch["noise"][:, None] * 1e-3
        loss = F.cross_entropy(logits, batch["labels"])
        if self.calls in self.nan_at:
            loss = loss * float("nan")
        if self.calls in self.nan_grad_at:  # a finite loss whose gradient is not: d sqrt(x)/dx at 0
            loss = loss + torch.sqrt((logits * 0).sum())
        return loss, {}

    def evaluate(self, model, split="validation"):
        with torch.no_grad():
            predicted = model(self.ids[64:]).logits.argmax(-1)
        return {"accuracy": float((predicted == self.labels[64:]).float().mean())}


CONFIG = TrainConfig(max_steps=12, batch_size=8, accumulate=2, lr=3e-3, warmup_steps=3, eval_every=3,
                     save_every=4, log_every=1, num_workers=0)


def test_learning_rate_schedule():
    config = TrainConfig(max_steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate(0, config) == pytest.approx(0.1) and learning_rate(9, config) == pytest.approx(1.0)
    assert learning_rate(60, config) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert learning_rate(110, config) == pytest.approx(0.1)


def _losses(path):
    with open(path) as f:
        return [(r["step"], r["value"]) for r in csv.DictReader(f) if r["metric"] == "loss"]


def test_resume_after_a_crash_ends_with_the_same_weights(tmp_path):
    train(CountTask(), CONFIG, tmp_path / "straight", progress=False)
    with pytest.raises(KeyboardInterrupt):  # crashes during step 11 (micro-batch call 21)
        train(CountTask(crash_at=21), CONFIG, tmp_path / "resumed", progress=False)
    assert json.loads((tmp_path / "resumed/checkpoint/trainer.json").read_text())["step"] == 8
    train(CountTask(), CONFIG, tmp_path / "resumed", resume=True, progress=False)
    straight = load_file(tmp_path / "straight/model.safetensors")
    resumed = load_file(tmp_path / "resumed/model.safetensors")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    assert _losses(tmp_path / "straight/metrics.csv") == _losses(tmp_path / "resumed/metrics.csv")
    optimizer = load_file(tmp_path / "resumed/checkpoint/optimizer.safetensors")
    assert any(k.endswith("exp_avg_sq") for k in optimizer) and "rng.cpu" in optimizer


def test_batches_built_in_worker_processes_give_the_same_run(tmp_path):
    train(CountTask(), CONFIG, tmp_path / "inline", progress=False)
    train(CountTask(), dataclasses.replace(CONFIG, num_workers=2), tmp_path / "workers", progress=False)
    inline, workers = (load_file(tmp_path / f"{d}/model.safetensors") for d in ("inline", "workers"))
    assert all(torch.equal(inline[k], workers[k]) for k in inline)


def test_activation_checkpointing_trains_to_the_same_weights(tmp_path, monkeypatch):
    import perceiver.layers as layers

    calls, checkpoint = [], layers.checkpoint
    monkeypatch.setattr(layers, "checkpoint", lambda *a, **kw: calls.append(1) or checkpoint(*a, **kw))
    config = dataclasses.replace(CONFIG, max_steps=4, eval_every=4, save_every=4)
    train(CountTask(), config, tmp_path / "plain", progress=False)
    assert calls == []
    train(CountTask(), dataclasses.replace(config, activation_checkpointing=True), tmp_path / "checkpointed",
          progress=False)
    assert len(calls) == 2 * 4 * 2  # the encoder's two layers (the decoder is in one chunk), 4 steps x 2
    plain, checkpointed = (load_file(tmp_path / f"{d}/model.safetensors") for d in ("plain", "checkpointed"))
    assert all(torch.equal(plain[k], checkpointed[k]) for k in plain)


def test_metrics_go_to_csv_tensorboard_and_a_curves_png(tmp_path):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(CountTask(), CONFIG, tmp_path, progress=False)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    with open(tmp_path / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "validation"]
    logged = [(e.step, e.value) for e in events.Scalars("accuracy/validation")]
    assert [int(r["step"]) for r in rows] == [s for s, _ in logged] == [3, 6, 9, 12]
    assert [float(r["value"]) for r in rows] == pytest.approx([v for _, v in logged], rel=1e-5)
    with Image.open(tmp_path / "curves.png") as image:
        assert image.width > 300 and image.height > 200


def test_best_model_is_kept(tmp_path):
    train(CountTask(), CONFIG, tmp_path, progress=False)
    with open(tmp_path / "metrics.csv") as f:
        scores = [(float(r["value"]), int(r["step"])) for r in csv.DictReader(f)
                  if r["split"] == "validation"]
    best = json.loads((tmp_path / "best/metrics.json").read_text())
    assert best["accuracy"] == max(s for s, _ in scores)
    assert best["step"] == min(step for s, step in scores if s == best["accuracy"])


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    with pytest.raises(FloatingPointError, match=r"step 6: loss is nan, grad_norm is nan; stopping. The last "
                                                 r"checkpoint, of step 4, is intact in .*checkpoint"):
        train(CountTask(nan_at=11), CONFIG, tmp_path, progress=False)
    assert json.loads((tmp_path / "checkpoint/trainer.json").read_text())["step"] == 4
    with pytest.raises(FloatingPointError, match=r"step 3: grad_norm is nan; stopping"):
        train(CountTask(nan_grad_at=[6]), CONFIG, tmp_path / "grad", progress=False)


def test_non_finite_steps_can_be_skipped(tmp_path, capsys):
    config = dataclasses.replace(CONFIG, on_nonfinite="skip")
    task = CountTask(nan_at=[11], nan_grad_at=[15])  # steps 6 and 8 (two micro-batches per step)
    train(task, config, tmp_path, progress=False)
    w = task.weights  # w[c]: the weights when micro-batch call c began
    assert torch.equal(w[11], w[13]) and torch.equal(w[15], w[17])  # steps 6 and 8 left them alone
    assert not torch.equal(w[13], w[15]) and torch.isfinite(w[23]).all()
    optimizer = load_file(tmp_path / "checkpoint/optimizer.safetensors")
    assert optimizer["optimizer.0.step"].item() == CONFIG.max_steps - 2  # Adam saw 10 updates
    assert "step 6: loss is nan, grad_norm is nan; update skipped" in capsys.readouterr().err
    with pytest.raises(FloatingPointError, match=r"step 11: loss is nan, .* \(11 steps in a row\)"):
        train(CountTask(nan_at=range(1, 100)), config, tmp_path / "all", progress=False)
    with pytest.raises(ValueError, match=r"on_nonfinite: expected one of \['stop', 'skip'\], got 'ignore'"):
        TrainConfig(on_nonfinite="ignore")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_a_checkpoint_stops_and_resume_is_exact(tmp_path, signum):
    train(CountTask(), CONFIG, tmp_path / "straight", progress=False)
    before = signal.getsignal(signum)
    with pytest.raises(Stopped, match=f"stopped by {signum.name} after step 7; checkpoint saved"):
        train(CountTask(signals={13: signum}), dataclasses.replace(CONFIG, deterministic=True),
              tmp_path / "stopped", progress=False)
    assert json.loads((tmp_path / "stopped/checkpoint/trainer.json").read_text())["step"] == 7
    assert signal.getsignal(signum) == before  # the previous handler is back
    train(CountTask(), CONFIG, tmp_path / "stopped", resume=True, progress=False)
    straight, resumed = (load_file(tmp_path / f"{d}/model.safetensors") for d in ("straight", "stopped"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_a_second_signal_interrupts_at_once(tmp_path):
    with pytest.raises(KeyboardInterrupt, match="SIGTERM received twice"):
        train(CountTask(signals={5: signal.SIGTERM, 6: signal.SIGTERM}), CONFIG, tmp_path, progress=False)


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--resume: expected a checkpoint"):
        train(CountTask(), CONFIG, tmp_path, resume=True, progress=False)


def test_a_save_cut_off_mid_rename_leaves_the_previous_checkpoint(tmp_path):
    from perceiver import PerceiverIO

    model = PerceiverIO(CountTask().model_config())
    optimizer = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path / "checkpoint", model, optimizer.state_dict(), {"step": 3})
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")  # crash between the two renames
    found = find_checkpoint(tmp_path / "checkpoint")
    assert found == tmp_path / "checkpoint.old"
    assert json.loads((found / "trainer.json").read_text())["step"] == 3


def test_examples_per_second_count_training_alone(tmp_path):
    import time

    class SlowEvaluation(CountTask):
        def evaluate(self, model, split="validation"):
            time.sleep(2.0)
            return super().evaluate(model, split)

    config = dataclasses.replace(CONFIG, max_steps=2, eval_every=1, save_every=2)
    train(SlowEvaluation(), config, tmp_path, progress=False)
    with open(tmp_path / "metrics.csv") as f:
        rates = [float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "examples_per_s"]
    examples = config.max_steps * config.accumulate * config.batch_size
    # two tiny steps take well under a second; counted with step 1's evaluation (2 s asleep), the
    # rate at step 2 would be below examples / 2 s
    assert len(rates) == 2 and rates[-1] > examples / 1.0
