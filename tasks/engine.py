"""The training engine every job shares.

A job is a ``Task``: it builds the model config, turns example indices into a batch, computes the
loss of a batch and evaluates a split. The engine does the rest: AdamW with linear warm-up and
cosine decay, gradient accumulation and clipping, bf16 autocast, activation checkpointing and
torch.compile switches, a progress bar, metrics, checkpoints every ``save_every`` steps and at the
end, the best model by the task's validation metric, exact resumption, and several processes
under torchrun (``tasks.distributed``: DDP or FSDP2; ``batch_size`` is the global batch).

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
learning rate a pure function of the step, and every random draw is seeded by the seed, the
micro-step and the process's rank: a batch's draws (masks, query subsets) by a generator of its
own, dropout by reseeding the global RNG before each micro-batch. So a run stopped at step k and
resumed ends with the same weights as an uninterrupted run (on CPU).

SIGTERM or SIGINT lets the current step finish, saves a checkpoint and raises ``Stopped`` (a
second signal interrupts at once). A non-finite loss or gradient norm stops the run with the last
checkpoint intact, or with ``on_nonfinite="skip"`` drops that step's update (at most
``MAX_SKIPS_IN_A_ROW`` in a row).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch

from tasks.batches import MicroBatches, batch_stream, derived_seed, to_device
from tasks.distributed import STRATEGIES, Processes
from tasks.metrics_log import MetricsLog
from tasks.run_dir import claim_for_every_process
from tasks.settings import at_least, between, check_settings, one_of, positive, rule
from tasks.state import load_checkpoint, read_trainer, save_checkpoint
from tasks.stopping import Stopped, stop_requests


@dataclass
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 32
    accumulate: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0  # the cosine decays to lr * min_lr_ratio
    # the step where the cosine reaches its floor (default max_steps); a resume with a larger
    # --max-steps recomputes the cosine over the new length unless this keeps the old one
    decay_steps: int | None = None
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
    strategy: str = "ddp"  # under torchrun: "ddp" (replicas) or "fsdp" (sharded, FSDP2)
    deterministic: bool = False  # torch.use_deterministic_algorithms: bit-exact reruns on GPU too

    def __post_init__(self):
        check_settings(self, "train", {
            "max_steps": at_least(1), "batch_size": at_least(1), "accumulate": at_least(1), "lr": positive,
            "min_lr_ratio": between(0, 1), "grad_clip": positive, "decay_steps": at_least(1),
            "eval_every": at_least(1), "save_every": at_least(1), "log_every": at_least(1),
            "on_nonfinite": one_of("stop", "skip"), "strategy": one_of(*STRATEGIES),
            "device": rule(lambda d: d in ("auto", "cpu", "cuda", "mps") or d.startswith("cuda:"),
                           "auto, cpu, cuda, cuda:N or mps")})


MAX_SKIPS_IN_A_ROW = 10


class Task(Protocol):
    best_metric: str  # validation metric to maximise
    splits: dict  # split name -> data; evaluate() accepts these names

    def model_config(self): ...
    def num_train_examples(self) -> int: ...
    def train_batch(self, indices: list[int], generator: torch.Generator): ...  # seeded per micro-batch
    def loss(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]: ...
    def evaluate(self, model, split: str = "validation") -> dict[str, float]: ...
    # Optional: ``skipped`` (bad records dropped) and ``label_names`` (written to run.json),
    # ``write_samples(model, dir)``
    # (example outputs after training), ``predictions(model, texts)`` or ``predict_files(model,
    # stems, dir)`` for ``perceiver predict``.


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, (config.decay_steps or config.max_steps) - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def _autocast(config: TrainConfig, device: torch.device):
    if not config.bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def train(task: Task, config: TrainConfig, output_dir: str | Path, resume: bool = False,
          run_info: dict | None = None, progress: bool = True, overwrite: bool = False) -> dict[str, float]:
    """Train ``task`` for ``config.max_steps`` optimizer steps; return the final validation metrics
    (in every process). Raises ``Stopped`` after saving a checkpoint if SIGTERM or SIGINT arrives.
    ``output_dir`` must not hold a run unless it is resumed or ``overwrite``-n, and is locked while
    the run writes there (``tasks.run_dir``)."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    if config.deterministic:  # cuBLAS needs this workspace setting before its first use
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    procs = Processes.start(config.device, config.strategy)
    try:
        _check_run(task, config, Path(output_dir), resume, procs)
        with stop_requests() as received, claim_for_every_process(Path(output_dir), resume, overwrite, procs):
            return Run(task, config, Path(output_dir), procs, resume, run_info).train(progress, received)
    finally:
        procs.close()
        torch.use_deterministic_algorithms(deterministic)


def _check_run(task: Task, config: TrainConfig, output_dir: Path, resume: bool, procs: Processes) -> None:
    """What can be refused before anything is written: the batch against the data and the
    processes, and a resume against its checkpoint."""
    if config.batch_size % procs.world_size:
        raise ValueError(f"batch_size: expected a multiple of the {procs.world_size} processes, got "
                         f"{config.batch_size}")
    if task.num_train_examples() < config.batch_size:
        raise ValueError(f"batch_size: expected at most the {task.num_train_examples()} training "
                         f"examples, got {config.batch_size}")
    if not resume:
        return
    trainer = read_trainer(output_dir / "checkpoint")
    if trainer is None:
        raise ValueError(f"--resume: expected a checkpoint in {str(output_dir / 'checkpoint')!r}, found none")
    if trainer["step"] > config.max_steps:
        raise ValueError(f"--max-steps: expected at least the {trainer['step']} steps already done in "
                         f"{str(output_dir / 'checkpoint')!r}, got {config.max_steps}")


class Run:
    """One training run in this process: the model, its optimizer, and what rank 0 writes."""

    def __init__(self, task: Task, config: TrainConfig, output_dir: Path, procs: Processes, resume: bool,
                 run_info: dict | None):
        from perceiver.config import build
        from perceiver.layers import set_checkpointing

        self.task, self.config, self.output_dir, self.procs = task, config, output_dir, procs
        torch.manual_seed(config.seed)  # the same initial weights in every process
        self.model_config = task.model_config()
        model = build(self.model_config).to(procs.device)
        set_checkpointing(model, config.activation_checkpointing)
        self.start, self.best, optimizer_state = 0, {"value": None, "step": None}, None
        if resume:  # _check_run found the checkpoint
            optimizer_state, trainer = load_checkpoint(output_dir / "checkpoint", model)
            self.start, self.best = trainer["step"], trainer["best"]
        self.forward = procs.wrap(model)  # DDP around it, or FSDP2 shards it in place
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        if optimizer_state is not None:
            procs.load_optimizer_state(model, self.optimizer, optimizer_state)
        if config.compile:
            self.forward = torch.compile(self.forward)
        self.log = None
        if procs.is_main:
            info = (run_info or {}) | {"train": asdict(config), "processes": procs.world_size,
                                       "skipped_records": getattr(task, "skipped", 0),
                                       "label_names": getattr(task, "label_names", None)}
            (output_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n")
            self.log = MetricsLog(output_dir, keep_until=self.start if resume else None)

    def whole_model(self, with_optimizer: bool = False):
        """``(model, optimizer state)`` to write, whole, on rank 0 (``(None, None)`` elsewhere); under
        FSDP every process must call it, and rank 0 gets a CPU copy of the gathered weights."""
        from perceiver.config import build

        weights, optimizer_state = self.procs.full_state(self.model, self.optimizer, with_optimizer)
        if not self.procs.is_main:
            return None, None
        if not self.procs.sharded:
            return self.model, optimizer_state
        copy = build(self.model_config)
        copy.load_state_dict(weights)
        return copy, optimizer_state

    def checkpoint(self, step: int) -> None:
        model, optimizer_state = self.whole_model(with_optimizer=True)
        if self.procs.is_main:
            model.save_pretrained(self.output_dir)
            save_checkpoint(self.output_dir / "checkpoint", model, optimizer_state,
                            {"step": step, "best": self.best, "best_metric": self.task.best_metric})
        self.procs.barrier()  # no process leaves (or is stopped) while rank 0 writes

    def validation_metrics(self) -> dict:
        """The task's validation metrics, computed on rank 0 (by every process under FSDP, whose
        forward is collective) and shared with all."""
        metrics = None
        if self.procs.is_main or self.procs.sharded:
            device = self.procs.device
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                self.model.eval()
                metrics = self.task.evaluate(self.model, "validation")
                self.model.train()
        return self.procs.broadcast(metrics)

    def evaluate(self, step: int) -> dict:
        metrics = self.validation_metrics()
        value = metrics[self.task.best_metric]
        improved = self.best["value"] is None or value > self.best["value"]
        if improved:
            self.best.update(value=value, step=step)
        model = self.whole_model()[0] if improved else None
        if self.procs.is_main:
            self.log.write(step, "validation", metrics)
            self.log.plot()
            if improved:
                model.save_pretrained(self.output_dir / "best")
                text = json.dumps(metrics | {"step": step}) + "\n"
                (self.output_dir / "best" / "metrics.json").write_text(text)
        return metrics

    def train(self, progress: bool, stop_signals: list[int]) -> dict:
        from tqdm.auto import tqdm

        config, procs = self.config, self.procs
        self.model.train()
        bar = tqdm(range(self.start, config.max_steps), initial=self.start, total=config.max_steps,
                   disable=not (progress and procs.is_main), desc="train")
        micro_batches = MicroBatches(self.task, config, self.start * config.accumulate,
                                     config.max_steps * config.accumulate, procs)
        try:
            with batch_stream(micro_batches, config.num_workers, config.seed, procs.device) as batches:
                metrics = self._steps(bar, batches, stop_signals)
        finally:
            if self.log:
                self.log.close()
        return self.finish(metrics)

    def _steps(self, bar, batches, stop_signals: list[int]) -> dict:
        config, procs, optimizer = self.config, self.procs, self.optimizer
        # examples per second of training alone: evaluation and checkpoints are not counted
        seen, training_time, metrics, skips_in_a_row = 0, 0.0, {}, 0
        for step in bar:
            began = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, config)
            totals = {}
            for micro in range(step * config.accumulate, (step + 1) * config.accumulate):
                batch = to_device(next(batches), procs.device)
                torch.manual_seed(derived_seed(config.seed, "dropout", micro, procs.rank))
                with _autocast(config, procs.device):
                    loss, parts = self.task.loss(self.forward, batch)
                (loss / config.accumulate).backward()
                for k, v in ({"loss": loss.item()} | parts).items():
                    totals[k] = totals.get(k, 0.0) + v / config.accumulate
                seen += config.batch_size
            names = sorted(totals)  # averaged over processes, with whether any was asked to stop
            *values, stop = procs.reduce([totals[k] for k in names] + [float(bool(stop_signals))])
            totals = dict(zip(names, values, strict=True))
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip or math.inf)
            totals["grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            done = step + 1
            bad = [f"{k} is {totals[k]}" for k in ("loss", "grad_norm") if not math.isfinite(totals[k])]
            skips_in_a_row = skips_in_a_row + 1 if bad else 0
            if bad and (config.on_nonfinite == "stop" or skips_in_a_row > MAX_SKIPS_IN_A_ROW):
                many = f" ({skips_in_a_row} steps in a row)" if skips_in_a_row > 1 else ""
                raise FloatingPointError(f"step {done}: {', '.join(bad)}{many}; stopping. {self.on_disk()}")
            if bad and procs.is_main:
                print(f"step {done}: {', '.join(bad)}; update skipped (train.on_nonfinite=skip)",
                      file=sys.stderr)
            if not bad:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            training_time += time.perf_counter() - began
            rate = seen / max(1e-9, training_time)
            bar.set_postfix(loss=f"{totals['loss']:.4f}", ex_per_s=f"{rate:.1f}")
            if procs.is_main and (done % config.log_every == 0 or done == config.max_steps):
                self.log.write(done, "train", totals | {"lr": learning_rate(step, config),
                                                        "examples_per_s": rate})
            if done % config.eval_every == 0 or done == config.max_steps:
                metrics = self.evaluate(done)
            if done % config.save_every == 0 or done == config.max_steps or stop:
                self.checkpoint(done)
            if stop:
                raise Stopped(stop_signals[0] if stop_signals else signal.SIGTERM, done,
                              self.output_dir / "checkpoint")
        return metrics

    def on_disk(self) -> str:
        """What a failed run leaves: its last checkpoint, or none."""
        trainer = read_trainer(self.output_dir / "checkpoint")
        if trainer is None:
            return (f"No checkpoint was written (the first was due at step "
                    f"{min(self.config.save_every, self.config.max_steps)})")
        return (f"The last checkpoint, of step {trainer['step']}, is intact in "
                f"{str(self.output_dir / 'checkpoint')!r} (continue with --resume)")

    def finish(self, metrics: dict) -> dict:
        """After the last step: the final metrics, and the job's samples written."""
        config, procs = self.config, self.procs
        if self.start >= config.max_steps:  # nothing left to train: still report the metrics
            metrics = self.validation_metrics()
        if hasattr(self.task, "write_samples"):
            model = self.whole_model()[0]
            if procs.is_main:
                model.eval()
                self.task.write_samples(model, self.output_dir / "samples")
        return metrics
