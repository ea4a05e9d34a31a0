"""Activation checkpointing: the memory a training step saves and the time it costs.

    .venv/bin/python benchmarks/checkpointing.py                       # every case below
    .venv/bin/python benchmarks/checkpointing.py --cases A@16 --pairs 3

A case is a configuration of ``benchmarks/run.py`` at a batch size (``A@16``: config A, batch 16),
optionally with the decoder (HiP: the head) in chunks of so many queries (``A@16:512``; HiP's
chunks count positions per group).
For each, with checkpointing off and on (``perceiver.set_checkpointing``, as
``train.activation_checkpointing`` sets it):

- **memory**: in a fresh process per setting, the peak RSS of two training steps above the RSS
  before them (the model, its inputs and the interpreter; the peak is reset after building, through
  ``/proc/self/clear_refs``; ``torch._dynamo``, which ``torch.utils.checkpoint`` imports on first
  use, is imported before that). glibc's mmap threshold is pinned at
  128 KiB (``MALLOC_MMAP_THRESHOLD_``), so that freed tensors go back to the system and RSS follows
  the live tensors: under the default allocator freed memory stays in the heap and the peak RSS of
  the language perceiver's step over-states its live peak by ~0.9 GB.
- **time**: in one more process, under the default allocator, steps alternated between the two
  settings; the median step of each and the median of the paired ratios (on / off).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from perceiver import set_checkpointing

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CASES = ["A@4", "A@16", "A@16:512", "language-perceiver@2", "language-perceiver@8", "multimodal@1",
         "multimodal@4", "HiP-16-256k@1", "HiP-16-256k@1:2048"]


def build(case: str):
    """(model, step) for ``case``: a training step of the benchmark's configuration at that batch."""
    from impls import BUILDERS
    from run import CONFIGS, inputs

    name, batch = case.split("@")
    batch, _, decoder_chunk = batch.partition(":")
    spec = dict(CONFIGS[name], batch=int(batch))
    torch.manual_seed(0)
    model, run = BUILDERS["ours"](spec)
    if decoder_chunk and hasattr(model, "head_chunk_size"):  # HiP
        model.head_chunk_size = int(decoder_chunk)
    elif decoder_chunk:
        model.decoder.chunk_size = int(decoder_chunk)
    model.train()
    x, loss_of = inputs(spec, torch.Generator().manual_seed(0))

    def step():
        model.zero_grad(set_to_none=True)
        loss_of(run(x)).backward()

    return model, step


def rss_gb(field: str = "VmRSS") -> float:
    """The process's resident memory (``VmRSS``) or its peak since the last reset (``VmHWM``)."""
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
    return kib * 1024 / 1e9


def memory_worker(case: str, enabled: bool) -> dict:
    import torch._dynamo  # noqa: F401  torch.utils.checkpoint imports it on first use (~120 MB, once)

    model, step = build(case)
    set_checkpointing(model, enabled)
    with open("/proc/self/clear_refs", "w") as f:  # the peak restarts here, after building
        f.write("5")
    before = rss_gb()
    step()
    step()
    return {"before_gb": before, "peak_gb": rss_gb("VmHWM")}


def time_worker(case: str, pairs: int) -> dict:
    model, step = build(case)
    times = {False: [], True: []}
    for enabled in (False, True):  # warm-up
        set_checkpointing(model, enabled)
        step()
    for i in range(pairs):
        for enabled in ((False, True) if i % 2 == 0 else (True, False)):
            set_checkpointing(model, enabled)
            start = time.perf_counter()
            step()
            times[enabled].append(time.perf_counter() - start)
    ratios = [on / off for on, off in zip(times[True], times[False], strict=True)]
    return {"off_s": statistics.median(times[False]), "on_s": statistics.median(times[True]),
            "ratio": statistics.median(ratios)}


def in_subprocess(args: list[str], env: dict | None = None) -> dict:
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})))
    if done.returncode != 0:
        raise RuntimeError(f"{args}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=CASES)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--worker", nargs=2, metavar=("KIND", "CASE"), help=argparse.SUPPRESS)
    parser.add_argument("--enabled", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, case = args.worker
        row = memory_worker(case, args.enabled) if kind == "memory" else time_worker(case, args.pairs)
        print(json.dumps(row))
        return
    pinned = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    print("| case | step memory off | on | saved | step off | on | time ratio (on / off) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for case in args.cases:
        memory = {enabled: in_subprocess(["--worker", "memory", case] + ["--enabled"] * enabled, pinned)
                  for enabled in (False, True)}
        used = {k: m["peak_gb"] - m["before_gb"] for k, m in memory.items()}
        timing = in_subprocess(["--worker", "time", case, "--pairs", str(args.pairs)])
        print(f"| {case} | {used[False]:.2f} GB | {used[True]:.2f} GB | {1 - used[True] / used[False]:.0%} "
              f"| {timing['off_s']:.3f} s | {timing['on_s']:.3f} s | {timing['ratio']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
