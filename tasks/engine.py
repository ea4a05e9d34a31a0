"""The training engine every job shares.

A job is a ``Task``: it builds the model config, turns example indices into a batch, computes the
loss of a batch and evaluates a split. The engine does the rest: AdamW with linear warm-up and
cosine decay, gradient accumulation and clipping, bf16 autocast, activation checkpointing and
torch.compile switches, a progress bar, metrics, checkpoints every
``save_every`` steps and at the end, the best model by the task's validation metric, and exact
resumption.

Output directory::

    DIR/config.json, model.safetensors   the latest model (perceiver.from_pretrained(DIR))
    DIR/run.json                         what was run (task, data, preset, settings)
    DIR/checkpoint/                      model + optimizer + RNG + step, for --resume
    DIR/best/                            the best model by validation metric, with metrics.json
    DIR/metrics.csv, tensorboard/        step, split, metric, value (tasks.metrics_log)
    DIR/curves.png                       training curves, redrawn at every evaluation
    DIR/samples/                         the job's example outputs, if it writes any (write_samples)

Batches are assembled by ``num_workers`` worker processes while the model trains.

Data order is a pure function of the seed and the step (a fresh permutation per epoch), the
learning rate a pure function of the step, and the RNG states are checkpointed, so a run stopped
at step k and resumed ends with the same weights as an uninterrupted run (on CPU). A batch's
random draws (masks, query subsets) come from a generator seeded by its micro-step.

SIGTERM or SIGINT lets the current step finish, saves a checkpoint and raises ``Stopped`` (a
second signal interrupts at once). A non-finite loss or gradient norm stops the run with the last
checkpoint intact, or with ``on_nonfinite="skip"`` drops that step's update (at most
``MAX_SKIPS_IN_A_ROW`` in a row).
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch

from tasks.metrics_log import MetricsLog
from tasks.state import find_checkpoint, load_checkpoint, save_checkpoint


@dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 32
    accumulate: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0  # the cosine decays to lr * min_lr_ratio
    grad_clip: float | None = 1.0
    eval_every: int = 250
    save_every: int = 250
    log_every: int = 10
    bf16: bool = False
    activation_checkpointing: bool = False
    compile: bool = False
    seed: int = 0
    device: str = "auto"  # "auto": cuda if available, else cpu
    num_workers: int = 1  # processes assembling training batches (0: in the training process)
    on_nonfinite: str = "stop"  # a non-finite loss or gradient norm: "stop", or "skip" the update

    def __post_init__(self):
        if self.on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite: expected 'stop' or 'skip', got {self.on_nonfinite!r}")


MAX_SKIPS_IN_A_ROW = 10
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """Training stopped by a signal after saving a checkpoint: continue with ``resume=True``."""

    def __init__(self, signum: int, step: int, directory: Path):
        self.signum, self.step = signum, step
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}; checkpoint saved "
                         f"in {str(directory)!r}; continue with --resume")


@contextlib.contextmanager
def stop_requests():
    """Yields a list that collects SIGTERM / SIGINT numbers instead of dying on them; a second
    signal raises ``KeyboardInterrupt`` at once. Only the main thread can take signals."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}

    def handler(signum, frame):
        if received:
            raise KeyboardInterrupt(f"{signal.Signals(signum).name} received twice")
        received.append(signum)

    for s in STOP_SIGNALS:
        signal.signal(s, handler)
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _ignore_stop_signals(worker_id: int) -> None:
    """Batch workers leave SIGTERM / SIGINT to the training process, which stops them itself."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


class Task(Protocol):
    best_metric: str  # validation metric to maximise
    splits: dict  # split name -> data; evaluate() accepts these names

    def model_config(self): ...
    def num_train_examples(self) -> int: ...
    def train_batch(self, indices: list[int], generator: torch.Generator): ...  # seeded per micro-batch
    def loss(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]: ...
    def evaluate(self, model, split: str = "validation") -> dict[str, float]: ...
    # Optional: ``skipped`` (bad records dropped, written to run.json), ``write_samples(model, dir)``
    # (example outputs after training), ``predictions(model, texts)`` or ``predict_files(model,
    # stems, dir)`` for ``perceiver predict``.


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def batch_indices(micro_step: int, num_examples: int, batch_size: int, seed: int) -> list[int]:
    """Examples of micro-batch ``micro_step``: epochs of seeded permutations, last partial batch
    of each epoch dropped."""
    per_epoch = num_examples // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size: expected at most the {num_examples} training examples, "
                         f"got {batch_size}")
    epoch, position = divmod(micro_step, per_epoch)
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[position * batch_size:(position + 1) * batch_size].tolist()


class MicroBatches(torch.utils.data.Dataset):
    """Micro-batch ``i`` of a run from ``start``: its examples and its random draws (masks, query
    subsets) are pure functions of the seed and the micro-step, so workers may build them in any
    order and a resumed run sees the batches an uninterrupted one would."""

    def __init__(self, task: Task, config: TrainConfig, start: int, stop: int):
        self.task, self.config, self.start, self.stop = task, config, start, stop
        self.num_examples = task.num_train_examples()

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        micro = self.start + i
        indices = batch_indices(micro, self.num_examples, self.config.batch_size, self.config.seed)
        generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + micro)
        return self.task.train_batch(indices, generator)


def to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def _autocast(config: TrainConfig, device: torch.device):
    if not config.bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def train(task: Task, config: TrainConfig, output_dir: str | Path, resume: bool = False,
          run_info: dict | None = None, progress: bool = True) -> dict[str, float]:
    """Train ``task`` for ``config.max_steps`` optimizer steps; return the final validation metrics.
    Raises ``Stopped`` after saving a checkpoint if SIGTERM or SIGINT arrives."""
    with stop_requests() as received:
        return _train(task, config, Path(output_dir), resume, run_info, progress, received)


def _train(task, config, output_dir, resume, run_info, progress, stop_signals):
    from tqdm.auto import tqdm

    from perceiver.config import build
    from perceiver.layers import SelfAttentionStack

    output_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto"
                          else config.device)
    torch.manual_seed(config.seed)
    model_config = task.model_config()
    model = build(model_config).to(device)
    for module in model.modules():  # every model's self-attention stacks (and what keys off them)
        if isinstance(module, SelfAttentionStack):
            module.checkpointing = config.activation_checkpointing
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start, best = 0, {"value": None, "step": None}
    if resume:
        if find_checkpoint(output_dir / "checkpoint") is None:
            raise ValueError(f"--resume: expected a checkpoint in {str(output_dir / 'checkpoint')!r}, "
                             "found none")
        trainer = load_checkpoint(output_dir / "checkpoint", model, optimizer)
        start, best = trainer["step"], trainer["best"]
    if task.num_train_examples() < config.batch_size:
        raise ValueError(f"batch_size: expected at most the {task.num_train_examples()} training examples, "
                         f"got {config.batch_size}")
    info = (run_info or {}) | {"train": asdict(config), "skipped_records": getattr(task, "skipped", 0)}
    (output_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")
    log = MetricsLog(output_dir, keep_until=start if resume else None)
    forward = torch.compile(model) if config.compile else model

    def checkpoint(step):
        model.save_pretrained(output_dir)
        save_checkpoint(output_dir / "checkpoint", model, optimizer,
                        {"step": step, "best": best, "best_metric": task.best_metric})

    def evaluate(step):
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            model.eval()
            metrics = task.evaluate(model, "validation")
            model.train()
        log.write(step, "validation", metrics)
        log.plot()
        value = metrics[task.best_metric]
        if best["value"] is None or value > best["value"]:
            best.update(value=value, step=step)
            model.save_pretrained(output_dir / "best")
            (output_dir / "best" / "metrics.json").write_text(json.dumps(metrics | {"step": step}) + "\n")
        return metrics

    model.train()
    bar = tqdm(range(start, config.max_steps), initial=start, total=config.max_steps, disable=not progress,
               desc="train")
    batches = iter(torch.utils.data.DataLoader(
        MicroBatches(task, config, start * config.accumulate, config.max_steps * config.accumulate),
        batch_size=None, num_workers=config.num_workers, pin_memory=device.type == "cuda",
        worker_init_fn=_ignore_stop_signals,
        generator=torch.Generator().manual_seed(config.seed)))  # leaves the global RNG (dropout) alone
    seen, began, metrics, skips_in_a_row = 0, time.perf_counter(), {}, 0
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config)
        totals = {}
        for _ in range(config.accumulate):
            batch = to_device(next(batches), device)
            with _autocast(config, device):
                loss, parts = task.loss(forward, batch)
            (loss / config.accumulate).backward()
            for k, v in ({"loss": loss.item()} | parts).items():
                totals[k] = totals.get(k, 0.0) + v / config.accumulate
            seen += config.batch_size
        totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                                   config.grad_clip or math.inf))
        done = step + 1
        bad = [f"{k} is {totals[k]}" for k in ("loss", "grad_norm") if not math.isfinite(totals[k])]
        skips_in_a_row = skips_in_a_row + 1 if bad else 0
        if bad and (config.on_nonfinite == "stop" or skips_in_a_row > MAX_SKIPS_IN_A_ROW):
            many = f" ({skips_in_a_row} steps in a row)" if skips_in_a_row > 1 else ""
            raise FloatingPointError(f"step {done}: {', '.join(bad)}{many}; stopping, the last checkpoint "
                                     f"in {str(output_dir / 'checkpoint')!r} is intact")
        if bad:
            print(f"step {done}: {', '.join(bad)}; update skipped (train.on_nonfinite=skip)", file=sys.stderr)
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        rate = seen / max(1e-9, time.perf_counter() - began)
        bar.set_postfix(loss=f"{totals['loss']:.4f}", ex_per_s=f"{rate:.1f}")
        if done % config.log_every == 0 or done == config.max_steps:
            log.write(done, "train", totals | {"lr": learning_rate(step, config), "examples_per_s": rate})
        if done % config.eval_every == 0 or done == config.max_steps:
            metrics = evaluate(done)
        if done % config.save_every == 0 or done == config.max_steps or stop_signals:
            checkpoint(done)
        if stop_signals:
            log.close()
            raise Stopped(stop_signals[0], done, output_dir / "checkpoint")
    log.close()
    model.eval()
    if start >= config.max_steps:  # nothing left to train: still report the metrics
        metrics = task.evaluate(model, "validation")
    if hasattr(task, "write_samples"):
        task.write_samples(model, output_dir / "samples")
    return metrics
