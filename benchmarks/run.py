"""Benchmark this package against the peers, side by side: one command, every number in one run.

    make bench                                       # everything; rewrites docs/benchmarks.md
    .venv/bin/python benchmarks/run.py --configs A B-8k --impls ours hf --no-write   # a quick look
    .venv/bin/python benchmarks/run.py --largest     # also the largest M that trains in 22 GB

Implementations (benchmarks/impls.py): ``ours``; ``hf`` = transformers' Perceiver parts; ``kr`` =
krasserm's perceiver-io 0.11.0; ``lu`` = lucidrains' perceiver-pytorch 0.11.0. The last two are
installed on first use into benchmarks/.peers/ (pip --target, no dependencies beyond torch/einops;
krasserm's package is also called ``perceiver`` and needs einops < 0.5, so each runs in its own
process with its own path). Configurations follow ../shared/reference/peers.md (CONFIGS below).

Every (implementation, configuration) runs in a fresh process: two warm-up steps, then
``--repeats`` timed forward+backward steps, the same for no-grad forward, the process's peak RSS,
and last the FLOPs of one step (``benchmarks/flops.py``). ``--rounds`` repeats that, interleaving
the implementations (ours, hf, kr, lu, then lu, kr, hf, ours, ...); times are medians over all
rounds' steps. The fp32/bf16 matmul peak (4096^3) is measured in the same run, first and last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
PEERS = HERE / ".peers"
IMPLS = ("ours", "ours-compiled", "hf", "kr", "lu")
BASE_IMPLS = ("ours", "hf", "kr", "lu")  # every configuration but HiP; ours-compiled runs config A only
PEER_PACKAGES = {  # pip install --no-deps --target PEERS/<impl>
    "kr": ["--ignore-requires-python", "perceiver-io==0.11.0", "einops>=0.4,<0.5", "fairscale>=0.4,<0.5"],
    "lu": ["perceiver-pytorch==0.11.0"],
}
A = dict(kind="mlm", length=2048, batch=4, dim=512, latents=256, latent_dim=512, layers=8, heads=8,
         cross_qk=512, decoder_qk=512)
B = dict(kind="classify", batch=1, dim=256, latents=256, latent_dim=512, layers=6, heads=8, cross_qk=512,
         decoder_qk=512, classes=10)
CONFIGS = {
    "A": dict(A, impls=IMPLS),
    "A-bf16": dict(A, bf16=True, impls=IMPLS),
    "language-perceiver": dict(A, batch=2, language_perceiver=True),
    "B-8k": dict(B, length=8192),
    "B-32k": dict(B, length=32768),
    "B-131k": dict(B, length=131072),
    "multimodal": dict(kind="kinetics", batch=1, impls=("ours", "hf")),
    "HiP-16-64k": dict(kind="hip", length=65536, batch=1, impls=("ours",)),
    "HiP-16-256k": dict(kind="hip", length=262144, batch=1, impls=("ours",)),
    "HiP-16-1M": dict(kind="hip", length=1048576, batch=1, impls=("ours",)),
}
MEMORY_LIMIT = 22 * 10**9  # RLIMIT_DATA of a --largest trial: the 24 GB machine less the system


def peer_env(impl: str) -> dict:
    """The environment of a worker: krasserm's or lucidrains' package first on the path."""
    env = dict(os.environ)
    if impl in PEER_PACKAGES:
        target = PEERS / impl
        if not (target / ".installed").exists():
            pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
            subprocess.run(pip + PEER_PACKAGES[impl], check=True)
            (target / ".installed").touch()
        env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    return env


def inputs(spec: dict, generator: torch.Generator, device: str | torch.device = "cpu"):
    """(model input, loss function of the output) for one step of ``spec``, drawn on the CPU by
    ``generator`` (the same numbers on every device) and moved to ``device`` (byte and HiP configs)."""
    import torch.nn.functional as F

    if spec["kind"] == "kinetics":  # 16 x 224 x 224 video, 30,720 audio samples, a label (masked)
        return kinetics_inputs(spec["batch"], generator)
    b, m = spec["batch"], spec["length"]
    if spec["kind"] == "hip":
        signal = torch.randn(b, m, 1, generator=generator).to(device)
        return signal, lambda out: (out.float() - signal).square().mean()
    ids = torch.randint(0, 262, (b, m), generator=generator).to(device)
    if spec["kind"] == "mlm":
        targets = torch.randint(0, 262, (b, m), generator=generator).to(device)
        return ids, lambda out: F.cross_entropy(out.float().flatten(0, 1), targets.flatten())
    labels = torch.randint(0, spec["classes"], (b,), generator=generator).to(device)
    return ids, lambda out: F.cross_entropy(out.float(), labels)


def kinetics_inputs(b: int, generator: torch.Generator, chunks: int = 128):
    """The multimodal step of the paper: a random 1/``chunks`` of the video and audio queries (6,272
    pixels, 15 audio patches) and the label are decoded; loss: the two MSEs plus the label's
    cross-entropy."""
    import torch.nn.functional as F
    from einops import rearrange

    (frames, height, width), samples, patch, classes = (16, 224, 224), 30720, 16, 700
    pixels_total, patches_total = frames * height * width, samples // patch
    video = torch.randn(b, frames, 3, height, width, generator=generator)
    audio = torch.randn(b, samples, 1, generator=generator)
    labels = torch.randint(0, classes, (b,), generator=generator)
    points = {"image": torch.randperm(pixels_total, generator=generator)[:pixels_total // chunks],
              "audio": torch.randperm(patches_total, generator=generator)[:patches_total // chunks],
              "label": None}
    pixel_targets = rearrange(video, "b t c h w -> b (t h w) c")[:, points["image"]]
    sample_targets = rearrange(audio, "b (n p) 1 -> b n p", p=patch)[:, points["audio"]].flatten(1)
    x = ({"image": video, "audio": audio, "label": F.one_hot(labels, classes).float()}, points)

    def loss_of(out):
        image = F.mse_loss(out["image"].float(), pixel_targets)
        audio = F.mse_loss(out["audio"].float(), sample_targets)
        return image + audio + F.cross_entropy(out["label"].float(), labels)

    return x, loss_of


def timed(fn, repeats: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def step_functions(model, forward, x, loss_of, bf16: bool):
    """(``step``: zero the gradients, ``loss_of(forward(x))``, backward, return the loss;
    ``infer``: the same loss without gradients), both under CPU bf16 autocast if ``bf16``."""
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def step():
        model.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_of(forward(x))
        loss.backward()
        return loss

    def infer():
        with torch.no_grad(), autocast:
            return loss_of(forward(x))

    return step, infer


def worker(impl: str, config: str, repeats: int, mode: str) -> dict:
    """One implementation and configuration in this process; ``mode`` "bench" measures everything,
    "train" / "infer" run one step (the --largest trials)."""
    sys.path.insert(0, str(HERE))
    from impls import BUILDERS

    spec = CONFIGS[config.split("@")[0]]
    if "@" in config:  # the --largest trials: B at another length
        spec = dict(spec, length=int(config.split("@")[1]))
    if mode != "bench":
        resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT, MEMORY_LIMIT))
    torch.manual_seed(0)
    model, run = BUILDERS[impl](spec)
    model.train()
    x, loss_of = inputs(spec, torch.Generator().manual_seed(0))
    step, infer = step_functions(model, run, x, loss_of, spec.get("bf16", False))
    if mode != "bench":
        (step if mode == "train" else infer)()
        return {"ok": True}
    row = {"impl": impl, "config": config, "params": sum(p.numel() for p in model.parameters())}
    if spec.get("bf16"):  # the same step in fp32: autocast must reproduce its loss
        with torch.no_grad():
            fp32, bf16 = float(loss_of(run(x))), float(infer())
        row["loss_rel_diff"] = abs(bf16 - fp32) / abs(fp32)
    row["train_s"] = timed(step, repeats)
    row["infer_s"] = timed(infer, repeats)
    row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    from flops import count_flops  # after the peak: torch's FLOP counter takes ~50 MB to import

    counted = getattr(run, "eager", run)  # the FLOP counter does not see inside compiled code
    for layer in getattr(run, "streamed", []):  # counted whole, after the peak RSS is taken
        layer.chunk_size = None
    row["flop"] = count_flops(lambda: loss_of(counted(x)).backward())
    return row


def matmul_peak(dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    """The matmul kernel's rate, GFLOP/s: ``n^3`` products into one preallocated output. A fresh
    output (64 MB in fp32, 32 MB in bf16: over glibc's largest mmap threshold) is mapped anew and
    page-faulted on every call, which cost ``a @ b`` 2-5% of its time here (183 against 190 GFLOP/s
    in fp32, 397 against 410 in bf16); a model step's outputs are smaller and come from the heap."""
    a, b, out = (torch.randn(n, n, dtype=dtype) for _ in range(3))
    return 2 * n**3 / statistics.median(timed(lambda: torch.mm(a, b, out=out), repeats)) / 1e9


def in_subprocess(impl: str, args: list[str], timeout: float | None = None) -> dict:
    """The worker's JSON line, or ``{"failed": why}``."""
    try:
        done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                              env=peer_env(impl), timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"failed": f"over {timeout:.0f} s"}
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
        return {"failed": lines[-1][:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench(configs: list[str], impls: list[str], rounds: int, repeats: int) -> list[dict]:
    rows = []
    for config in configs:
        names = [i for i in impls if i in CONFIGS[config].get("impls", BASE_IMPLS)]
        runs = {impl: [] for impl in names}
        for round in range(rounds):
            for impl in names if round % 2 == 0 else names[::-1]:  # who goes first alternates
                runs[impl].append(in_subprocess(impl, ["--worker", impl, config, "--repeats", str(repeats)]))
        for impl, results in runs.items():
            ok = [r for r in results if "failed" not in r]
            row = dict(ok[0]) if ok else {"impl": impl, "config": config, "failed": results[0]["failed"]}
            for key in ("train_s", "infer_s"):
                if ok:
                    row[key] = statistics.median(t for r in ok for t in r[key])
            if ok:
                row["peak_rss_gb"] = max(r["peak_rss_gb"] for r in ok)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def largest(impl: str, mode: str, start: int = 131072, steps: int = 1) -> dict:
    """The largest B length (doubling from ``start``, then ``steps`` bisection) whose one ``mode``
    step runs under RLIMIT_DATA = MEMORY_LIMIT."""
    def fits(length: int) -> bool:
        result = in_subprocess(impl, ["--worker", impl, f"B-8k@{length}", "--mode", mode], timeout=1200)
        print(json.dumps({"impl": impl, "mode": mode, "length": length, "fits": "failed" not in result}),
              flush=True)
        return "failed" not in result

    low, high = 0, start
    while fits(high):
        low, high = high, 2 * high
    for _ in range(steps):
        if low == 0:
            break
        middle = (low + high) // 2 // 1024 * 1024
        low, high = (middle, high) if fits(middle) else (low, middle)
    return {"impl": impl, "mode": mode, "largest": low, "fails_at": high}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--impls", nargs="+", default=list(IMPLS), choices=list(IMPLS))
    parser.add_argument("--rounds", type=int, default=2, help="processes per implementation and config")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per process")
    parser.add_argument("--largest", action="store_true", help="also search the largest trainable M")
    parser.add_argument("--largest-start", type=int, default=131072, help=argparse.SUPPRESS)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ as it is")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="bench", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == ["ours", "peak"]:
        print(json.dumps({"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}))
        return
    if args.worker:
        print(json.dumps(worker(*args.worker, args.repeats, args.mode)))
        return

    started = time.time()
    peaks = [in_subprocess("ours", ["--worker", "ours", "peak"])]
    rows = bench(args.configs, args.impls, args.rounds, args.repeats)
    peaks.append(in_subprocess("ours", ["--worker", "ours", "peak"]))
    searched = [i for i in args.impls if i in BASE_IMPLS] if args.largest else []
    limits = [largest(i, mode, args.largest_start) for i in searched for mode in ("train", "infer")]
    machine = {"processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "python": platform.python_version(),
               "peak_gflops": {k: max(p[k] for p in peaks) for k in ("fp32", "bf16")},
               "minutes": (time.time() - started) / 60}
    result = {"machine": machine, "rows": rows, "largest": limits}
    if args.no_write:
        print(json.dumps(result))
        return
    import report

    report.write(result, HERE.parent / "docs")


if __name__ == "__main__":
    main()
