"""The GPU section of the benchmarks: bf16 autocast training steps on one CUDA device, measured
against the device's own bf16 matmul rate and against transformers' Perceiver, in one process.

    PYTHONPATH=. python3 benchmarks/gpu.py --out gpu.json     # on the machine with the GPU
    .venv/bin/python benchmarks/gpu.py --device cpu --configs A --repeats 2   # a dry run here

Rows: config A (this package eager, under ``torch.compile`` and under ``torch.compile`` with CUDA
graphs, ``mode="reduce-overhead"``), the same at batch 64 (``A-b64``: at batch 4 a step is ~0.2
TFLOP, well under a millisecond of an H100's matmul rate, so kernel launches set its pace), config
B at M = 32k and 131k (this package and transformers) and HiP-16 at 1M elements (this package: its
folded head and absorbed encoder blocks on the device; benchmarks/run.py's CONFIGS and builders).
Each: forward+backward under bf16 autocast (the median
of ``--repeats`` synchronised steps after 3 warm-ups), tokens/s (batch x M per second), peak
memory allocated on the device, model FLOPs per step (benchmarks/flops.py; streamed
cross-attentions counted whole, without their recomputation) and model FLOPs utilisation: their
rate over the device's measured bf16 matmul rate (8192^3, median of 10). Checks, printed first:
the bf16 loss against the fp32 loss of the same step (0 for HiP, whose reconstructions start at
zero), this package's streamed cross-attention against attention over the whole input in fp32 (off
the CPU each chunk runs the explicit softmax), and HiP's folded head and absorbed encoder blocks
against the projections they replace (fp32).
Targets of the performance issue: config A's bf16 step at >= 50% of the matmul rate, and B-32k at
>= 3x transformers' step. One call may take longer than a lent machine's 10-minute limit per
command (each compiled row compiles first); ``--configs A A-b64`` and ``--configs B-32k B-131k
HiP-16-1M`` split it in two.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import count_flops  # noqa: E402
from impls import BUILDERS, ours_compiled  # noqa: E402
from run import CONFIGS, inputs, timed  # noqa: E402

COMPILED = ("ours", "ours-compiled", "ours-cudagraphs")
ROWS = {"A": COMPILED, "A-b64": COMPILED, "B-32k": ("ours", "hf"), "B-131k": ("ours", "hf"),
        "HiP-16-1M": ("ours",)}
SPECS = CONFIGS | {"A-b64": dict(CONFIGS["A"], batch=64)}
BUILDS = BUILDERS | {"ours-cudagraphs": functools.partial(ours_compiled, mode="reduce-overhead")}


def synchronised(device: torch.device, fn):
    def call():
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out
    return call


def matmul_rate(device: torch.device, n: int = 8192) -> float:
    """The device's bf16 matmul rate, FLOP/s (CPU: 4096^3), into a preallocated output (as
    ``run.matmul_peak``)."""
    n = n if device.type == "cuda" else 4096
    a, b, out = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(3))
    product = synchronised(device, lambda: torch.mm(a, b, out=out))
    return 2 * n**3 / statistics.median(timed(product, 10, warmup=3))


def relative_difference(actual: list[Tensor], expected: list[Tensor]) -> float:
    """``||a - b|| / ||b||`` over all the tensors of ``actual`` and ``expected`` taken together."""
    a, b = (torch.cat([t.flatten() for t in ts]) for ts in (actual, expected))
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def streamed_check(device: torch.device) -> float:
    """The relative difference ``||a - b|| / ||b||`` between a byte classifier streamed in chunks of
    1,024 and the same one attending to all 4,096 bytes at once (fp32), over its logits and every
    gradient taken together."""
    from perceiver import PerceiverIO, presets

    results = []
    for chunk_size in (None, 1024):
        torch.manual_seed(0)
        config = presets.byte_classifier(num_classes=10, max_seq_len=4096, dim=64, num_latents=32,
                                         latent_dim=64, num_layers=1, num_heads=4,
                                         cross_chunk_size=chunk_size)
        model = PerceiverIO(config).to(device)
        ids = torch.randint(0, 262, (2, 4096), generator=torch.Generator().manual_seed(1)).to(device)
        logits = model(ids).logits
        logits.square().sum().backward()
        results.append([logits.detach()] + [p.grad for p in model.parameters()])
    return relative_difference(results[1], results[0])


def folded_check(device: torch.device) -> float:
    """The relative difference ``||a - b|| / ||b||`` between a HiP mini over 8,192 elements with its
    head folded and its encoder blocks absorbed (perceiver/folded_attention.py,
    absorbed_attention.absorbed_sdpa) and the same model with every projection applied (fp32),
    over its reconstructions and every gradient taken together."""
    import perceiver.absorbed_attention as absorbed
    import perceiver.attention as attention
    from perceiver.hip import build_hip

    results, rules = [], (attention.folding_pays, absorbed.absorbed_sdpa_pays)
    try:
        for shortcuts in (True, False):
            if not shortcuts:
                attention.folding_pays = absorbed.absorbed_sdpa_pays = lambda *args: False
            torch.manual_seed(0)
            model = build_hip("mini", {"signal": (8192, 1)}).to(device)
            with torch.no_grad():
                for linear in model.unembed.values():
                    linear.weight.normal_()
            x = torch.randn(2, 8192, 1, generator=torch.Generator().manual_seed(1)).to(device)
            out = model({"signal": x}).logits["signal"]
            out.square().sum().backward()
            results.append([out.detach()] + [p.grad for p in model.parameters()])
    finally:
        attention.folding_pays, absorbed.absorbed_sdpa_pays = rules
    return relative_difference(results[0], results[1])


def measure(impl: str, config: str, device: torch.device, repeats: int, rate: float) -> dict:
    spec = SPECS[config]
    torch.manual_seed(0)
    model, run = BUILDS[impl](spec)
    model.to(device).train()
    x, loss_of = inputs(spec, torch.Generator().manual_seed(0), device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def step():
        model.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_of(run(x))
        loss.backward()

    with torch.no_grad():
        fp32 = float(loss_of(run(x)))
        with autocast:
            bf16 = float(loss_of(run(x)))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = statistics.median(timed(synchronised(device, step), repeats, warmup=3))
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    for layer in getattr(run, "streamed", []):  # counted whole
        layer.chunk_size = None
    model.zero_grad(set_to_none=True)
    eager = getattr(run, "eager", run)  # the counter does not see inside compiled code
    with autocast:
        flop = count_flops(lambda: loss_of(eager(x)).backward())
    return {"impl": impl, "config": config, "step_s": seconds,
            "tokens_per_s": spec["batch"] * spec["length"] / seconds, "peak_gb": peak, "flop": flop,
            "mfu": flop / seconds / rate, "loss_rel_diff": abs(bf16 - fp32) / abs(fp32)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--configs", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rate = matmul_rate(device)
    result = {"device": name, "torch": torch.__version__, "bf16_matmul_tflops": rate / 1e12,
              "streamed_vs_whole_fp32": streamed_check(device),
              "folded_and_absorbed_vs_projected_fp32": folded_check(device), "rows": []}
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}), flush=True)
    for config in args.configs:
        for impl in ROWS[config]:
            try:
                row = measure(impl, config, device, args.repeats, rate)
            except Exception as error:  # a peer that fails a configuration is a row, not the end
                row = {"impl": impl, "config": config, "failed": f"{type(error).__name__}: {error}"[:300]}
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print(f"\n{name}, torch {torch.__version__}, bf16 matmul {rate / 1e12:.3g} TFLOP/s\n")
    print("| config | implementation | step s | tokens/s | MFU | peak GB | bf16 vs fp32 loss |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in result["rows"]:
        if "failed" in r:
            print(f"| {r['config']} | {r['impl']} | failed: {r['failed']} | | | | |")
            continue
        peak = "" if r["peak_gb"] is None else f"{r['peak_gb']:.2f}"
        print(f"| {r['config']} | {r['impl']} | {r['step_s']:.4f} | {r['tokens_per_s']:,.0f} | "
              f"{r['mfu']:.0%} | {peak} | {r['loss_rel_diff']:.1e} |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
