"""Benchmark: forward+backward and no-grad time, peak memory, achieved GFLOP/s.

    make bench                      # all configurations, writes docs/benchmarks.md
    .venv/bin/python benchmarks/run.py --configs A B-8k --repeats 5 --no-write

Each configuration runs in its own process (peak RSS is per process), one warm-up step, then the
median of ``--repeats`` timed steps. The machine's fp32/bf16 matmul peak (4096^3) is measured in the
same run. Configurations follow ../shared/reference/peers.md: A = byte masked LM (M = 2048,
256 x 512 latents, 8 layers, batch 4); B = long-input byte classification (256 x 512 latents,
6 layers, batch 1) at M = 8k, 32k, 131k.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CONFIGS = {
    "A": dict(task="mlm", length=2048, batch=4),
    "A-bf16": dict(task="mlm", length=2048, batch=4, bf16=True),
    "B-8k": dict(task="classify", length=8192, batch=1),
    "B-32k": dict(task="classify", length=32768, batch=1),
    "B-131k": dict(task="classify", length=131072, batch=1),
}
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def build(task: str, length: int):
    from perceiver import PerceiverIO, presets

    if task == "mlm":
        return PerceiverIO(presets.byte_mlm(max_seq_len=length))
    return PerceiverIO(presets.byte_classifier(num_classes=10, max_seq_len=length))


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_config(name: str, repeats: int) -> dict:
    sys.path.insert(0, str(HERE))
    from flops import count_flops

    spec = CONFIGS[name]
    torch.manual_seed(0)
    model = build(spec["task"], spec["length"]).train()
    ids = torch.randint(0, 262, (spec["batch"], spec["length"]))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec.get("bf16", False))

    def step():
        model.zero_grad(set_to_none=True)
        with autocast:
            loss = model(inputs=ids).logits.float().square().mean()
        loss.backward()

    def infer():
        with torch.no_grad(), autocast:
            model(inputs=ids)

    flops = count_flops(step)
    train_s = timed(step, repeats)
    infer_s = timed(infer, repeats)
    return {
        "config": name, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "step_s": train_s, "infer_s": infer_s, "gflop": flops / 1e9,
        "gflops": flops / 1e9 / train_s,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def matmul_peak(dtype: torch.dtype, n: int = 4096, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, repeats) / 1e9


def in_subprocess(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict], peaks: dict) -> str:
    lines = ["| config | params | fwd+bwd s | no-grad fwd s | GFLOP/step | GFLOP/s | share of peak "
             "| peak RSS |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        peak = peaks["bf16"] if r["config"].endswith("bf16") else peaks["fp32"]
        lines.append(f"| {r['config']} | {r['params_m']:.1f}M | {r['step_s']:.3f} | {r['infer_s']:.3f} | "
                     f"{r['gflop']:.1f} | {r['gflops']:.0f} | {100 * r['gflops'] / peak:.0f}% | "
                     f"{r['peak_rss_gb']:.2f} GB |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Perceiver IO CPU benchmark")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "peak":
        print(json.dumps({"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}))
        return
    if args.worker:
        print(json.dumps(run_config(args.worker, args.repeats)))
        return

    peaks = in_subprocess(["--worker", "peak"])
    rows = []
    for name in args.configs:
        rows.append(in_subprocess(["--worker", name, "--repeats", str(args.repeats)]))
        print(json.dumps(rows[-1]), flush=True)
    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
               f"torch {torch.__version__}, Python {platform.python_version()}; matmul peak (4096^3) "
               f"fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
    report = f"{machine}\n\n{table(rows, peaks)}\n"
    print(report)
    if not args.no_write:
        doc = HERE.parent / "docs" / "benchmarks.md"
        text = doc.read_text()
        start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
        doc.write_text(text[:start] + "\n" + report + text[end:])


if __name__ == "__main__":
    main()
