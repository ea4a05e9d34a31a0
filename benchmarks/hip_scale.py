"""Benchmark: HiP-16 against the flat Perceiver IO as the input grows to a million elements.

    .venv/bin/python benchmarks/hip_scale.py                     # 64k, 256k, 1M elements
    .venv/bin/python benchmarks/hip_scale.py --lengths 65536 --repeats 1
    MALLOC_MMAP_THRESHOLD_=131072 .venv/bin/python benchmarks/hip_scale.py --models hip-16 \
        --lengths 25165824 --repeats 1 --checkpointing --head-chunk-size 4096
                            # activation checkpointing, the head in chunks, and glibc returning
                            # freed memory at once: for more time, needed at this length only
                            # (THP_MEM_ALLOC_ENABLE=1 takes back some of the time)

One input of M scalar elements (batch 1), reconstructed in full (masked auto-encoding's forward and
backward with every element decoded). Each (model, M) runs in its own process: the median time of
``--repeats`` steps after a warm-up, and the process's peak RSS; a run that dies (out of memory)
or exceeds ``--timeout`` is reported as such. Each worker's data segment is limited to 22 GB
(``RLIMIT_DATA``), so that a length that does not fit fails to allocate. The growth exponent is the
log-log slope of time and memory from the smallest to the largest M that ran.

- hip-16: ``build_hip("16", {"signal": (M, 1)})`` (133M parameters at 1M elements).
- flat: Perceiver IO with 256 x 512 latents and 8 self-attention layers, raw samples with Fourier
  position features in, Fourier queries out (decoded in chunks of 65,536 queries).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import time

import torch
from run import MEMORY_LIMIT  # RLIMIT_DATA of a worker: the 24 GB machine less the system

LENGTHS = (65_536, 262_144, 1_048_576)


def build(name: str, length: int, checkpointing: bool = False, head_chunk_size: int | None = None):
    if name == "hip-16":
        from perceiver.hip import build_hip

        return build_hip("16", {"signal": (length, 1)}, checkpointing=checkpointing,
                         head_chunk_size=head_chunk_size)
    from perceiver import PerceiverIO
    from perceiver.inputs import AudioPatchAdapter
    from perceiver.model import DecoderConfig, EncoderConfig
    from perceiver.outputs import LinearOutput
    from perceiver.queries import FourierQueries

    return PerceiverIO(PerceiverIO.Config(
        input=AudioPatchAdapter.Config(length, 1, num_bands=32),
        encoder=EncoderConfig(num_latents=256, latent_dim=512, num_self_layers=8, num_self_heads=8),
        queries=FourierQueries.Config((length,), 32),
        decoder=DecoderConfig(num_heads=1, chunk_size=65_536),
        output=LinearOutput.Config(1),
    ))


def run(name: str, length: int, repeats: int, checkpointing: bool, head_chunk_size: int | None) -> dict:
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT, MEMORY_LIMIT))
    torch.manual_seed(0)
    model = build(name, length, checkpointing, head_chunk_size).train()
    signal = torch.randn(1, length, 1)

    def step():
        model.zero_grad(set_to_none=True)
        if name == "hip-16":
            out = model({"signal": signal}).logits["signal"]
        else:
            out = model(signal[..., 0]).logits
        (out.float() - signal).square().mean().backward()

    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"model": name, "length": length, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "step_s": statistics.median(times), "peak_rss_gb": resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss / 1e6}


def slope(rows: list[dict], key: str) -> float | None:
    ran = [r for r in rows if key in r]
    if len(ran) < 2:
        return None
    a, b = ran[0], ran[-1]
    return math.log(b[key] / a[key]) / math.log(b["length"] / a["length"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["hip-16", "flat"], choices=["hip-16", "flat"])
    parser.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--checkpointing", action="store_true", help="HiP-16: activation checkpointing")
    parser.add_argument("--head-chunk-size", type=int, help="HiP-16: positions per group its head "
                        "decodes at a time")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    options = ["--checkpointing"] * args.checkpointing
    options += [] if args.head_chunk_size is None else ["--head-chunk-size", str(args.head_chunk_size)]
    if args.worker:
        print(json.dumps(run(args.worker[0], int(args.worker[1]), args.repeats, args.checkpointing,
                             args.head_chunk_size)))
        return
    for name in args.models:
        rows = []
        for length in args.lengths:
            command = [sys.executable, __file__, "--worker", name, str(length), "--repeats",
                       str(args.repeats), *options]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
                row = (json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else
                       {"model": name, "length": length, "failed": f"exit {done.returncode} (killed: out of "
                                                                   f"memory?) {done.stderr.strip()[-200:]}"})
            except subprocess.TimeoutExpired:
                row = {"model": name, "length": length, "failed": f"over {args.timeout:.0f} s"}
            rows.append(row)
            print(json.dumps(row), flush=True)
        print(json.dumps({"model": name, "time_exponent": slope(rows, "step_s"),
                          "memory_exponent": slope(rows, "peak_rss_gb")}), flush=True)


if __name__ == "__main__":
    main()
