"""What glibc's page faults cost a training step on CPU: steps alternate, in one process, between
glibc told to keep freed memory and glibc as it settles by default.

    .venv/bin/python benchmarks/allocator.py --configs A-bf16 A B-32k multimodal --steps 8

PyTorch's CPU tensors come from glibc's malloc. By default glibc maps every block over its mmap
threshold (which rises with use to at most 32 MB) afresh and returns it on free, and trims the top
of its heap when over 64 MB of it are free; the kernel zero-fills each page of such memory on its
first touch again (a minor page fault). "keep" sets what the environment variables
``MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_TOP_PAD_=67108864`` set
at start-up (``mallopt``): blocks up to 1 GB come from the heap, which is never trimmed. "default"
is glibc's settled state (thresholds 32 and 64 MB, no padding), after trimming the heap.
Configurations are benchmarks/run.py's, this package's model only; glibc on Linux only.
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (benchmarks/run.py: configurations and inputs)
from impls import ours  # noqa: E402

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {"keep": {M_MMAP_THRESHOLD: 2**30, M_TRIM_THRESHOLD: 2**30, M_TOP_PAD: 2**26},
            "default": {M_MMAP_THRESHOLD: 2**25, M_TRIM_THRESHOLD: 2**26, M_TOP_PAD: 0}}


def use(libc, setting: str) -> None:
    for option, value in SETTINGS[setting].items():
        if libc.mallopt(option, value) != 1:
            raise RuntimeError(f"mallopt({option}, {value}) failed")
    if setting == "default":
        libc.malloc_trim(0)


def compare(config: str, steps: int) -> dict:
    libc = ctypes.CDLL("libc.so.6")
    spec = run.CONFIGS[config]
    torch.manual_seed(0)
    model, forward = ours(spec)
    x, loss_of = run.inputs(spec, torch.Generator().manual_seed(0))
    step, _ = run.step_functions(model, forward, x, loss_of, spec.get("bf16", False))
    times, faults = {"default": [], "keep": []}, {"default": 0, "keep": 0}
    for i in range(2 * steps + 1):
        setting = ("default", "keep")[i % 2]
        use(libc, setting)
        step()  # the first step after a switch settles the heap, untimed
        if i == 0:
            continue
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        step()
        times[setting].append(time.perf_counter() - start)
        faults[setting] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    ratios = [k / d for k, d in zip(times["keep"], times["default"], strict=True)]
    return {"config": config, "default_s": statistics.median(times["default"]),
            "keep_s": statistics.median(times["keep"]), "ratio": statistics.median(ratios),
            "faults_per_step": {s: f / steps for s, f in faults.items()}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["A-bf16", "A", "B-32k", "multimodal"],
                        choices=list(run.CONFIGS))
    parser.add_argument("--steps", type=int, default=8, help="timed steps per setting")
    args = parser.parse_args(argv)
    print("| config | default s | keep s | keep / default (median of pairs) | page faults a step |")
    print("|---|---:|---:|---:|---:|")
    for config in args.configs:
        r = compare(config, args.steps)
        print(f"| {config} | {r['default_s']:.3f} | {r['keep_s']:.3f} | {r['ratio']:.3f} | "
              f"{r['faults_per_step']['default']:,.0f} -> {r['faults_per_step']['keep']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
