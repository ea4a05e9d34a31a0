"""docs/benchmarks.md's generated section, docs/benchmarks.json and the log-log plots, from one
``benchmarks/run.py`` result: ``{"machine": ..., "rows": [...], "largest": [...]}``."""

from __future__ import annotations

import json
import math
from pathlib import Path

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
NAMES = {"ours": "this package", "ours-compiled": "this package, torch.compile", "hf": "transformers",
         "kr": "krasserm", "lu": "lucidrains"}
LONG = ("B-8k", "B-32k", "B-131k")


def _peak(row: dict, machine: dict) -> float:
    return machine["peak_gflops"]["bf16" if row["config"].endswith("bf16") else "fp32"]


def _rows_of(rows: list[dict], config: str) -> dict:
    return {r["impl"]: r for r in rows if r["config"] == config}


def table(rows: list[dict], machine: dict) -> str:
    lines = ["| config | implementation | params | fwd+bwd s | vs ours | no-grad s | GFLOP/step "
             "| share of peak | peak RSS |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        name = f"| {row['config']} | {NAMES[row['impl']]} |"
        if "failed" in row:
            lines.append(f"{name} failed: {row['failed']} | | | | | | |")
            continue
        ours = _rows_of(rows, row["config"]).get("ours", {})
        ratio = f"{row['train_s'] / ours['train_s']:.2f}x" if "train_s" in ours else ""
        share = 100 * row["flop"] / 1e9 / row["train_s"] / _peak(row, machine)
        lines.append(f"{name} {row['params'] / 1e6:.2f}M | {row['train_s']:.3f} | {ratio} | "
                     f"{row['infer_s']:.3f} | {row['flop'] / 1e9:.1f} | {share:.0f}% | "
                     f"{row['peak_rss_gb']:.2f} GB |")
    return "\n".join(lines)


def slope(rows: list[dict], impl: str, key: str) -> float | None:
    ends = [_rows_of(rows, c).get(impl, {}) for c in (LONG[0], LONG[-1])]
    if any(key not in r for r in ends):
        return None
    return math.log(ends[1][key] / ends[0][key]) / math.log(16)


def targets(rows: list[dict], machine: dict) -> str:
    """The performance issue's CPU targets, each with the measured value."""
    out = ["| target | measured | met |", "|---|---|---|"]

    def add(target, value, met):
        out.append(f"| {target} | {value} | {'yes' if met else 'no'} |")

    for config, goal in (("A", 85), ("A-bf16", 80)):
        for impl in ("ours", "ours-compiled"):
            row = _rows_of(rows, config).get(impl, {})
            if "train_s" in row:
                share = 100 * row["flop"] / 1e9 / row["train_s"] / _peak(row, machine)
                target = f"{config} ({NAMES[impl]}): >= {goal}% of the matmul peak"
                add(target, f"{share:.0f}%", share >= goal)
    row = _rows_of(rows, "A-bf16").get("ours")
    if row and "loss_rel_diff" in row:
        diff = row["loss_rel_diff"]
        add("A-bf16: fp32 loss reproduced to 1e-2", f"{diff:.1e}", diff <= 1e-2)
    for config in LONG[1:]:
        group = _rows_of(rows, config)
        peers = [r for i, r in group.items() if i != "ours" and "train_s" in r]
        if "train_s" not in group.get("ours", {}) or not peers:
            continue
        ours = group["ours"]
        speed = min(r["train_s"] for r in peers) / ours["train_s"]
        memory = ours["peak_rss_gb"] / min(r["peak_rss_gb"] for r in peers)
        add(f"{config}: >= 2x the best peer's step", f"{speed:.2f}x", speed >= 2)
        add(f"{config}: <= 0.5x the best peer's peak memory", f"{memory:.2f}x", memory <= 0.5)
    for key, what in (("train_s", "time"), ("peak_rss_gb", "memory")):
        value = slope(rows, "ours", key)
        if value is not None:
            add(f"{what} slope from 8k to 131k <= 1.05", f"{value:.2f}", value <= 1.05)
    return "\n".join(out)


def largest_table(limits: list[dict]) -> str:
    lines = ["| implementation | largest M, fwd+bwd | largest M, no-grad |", "|---|---:|---:|"]
    for impl in dict.fromkeys(r["impl"] for r in limits):
        found = {r["mode"]: r for r in limits if r["impl"] == impl}
        cells = [f"{found[m]['largest']:,} (fails at {found[m]['fails_at']:,})" if m in found
                 else "not searched" for m in ("train", "infer")]
        lines.append(f"| {NAMES[impl]} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def plots(rows: list[dict], docs: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [_rows_of(rows, c) for c in LONG]
    names = []
    for key, label, file in (("train_s", "fwd+bwd step, s", "bench_time.png"),
                             ("peak_rss_gb", "peak RSS, GB", "bench_memory.png")):
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for impl in NAMES:
            points = [(int(c.removeprefix("B-").removesuffix("k")) * 1024, g[impl][key])
                      for c, g in zip(LONG, lengths, strict=True) if key in g.get(impl, {})]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=NAMES[impl])
        ax.set(xscale="log", yscale="log", xlabel="input length M (bytes)", ylabel=label,
               title=f"config B: {label.split(',')[0]}")
        ax.legend()
        fig.tight_layout()
        (docs / "img").mkdir(exist_ok=True)
        fig.savefig(docs / "img" / file, dpi=100)
        plt.close(fig)
        names.append(file)
    return names


def write(result: dict, docs: Path) -> None:
    machine, rows = result["machine"], result["rows"]
    (docs / "benchmarks.json").write_text(json.dumps(result, indent=1) + "\n")
    head = (f"{machine['processor']}, {machine['threads']} threads, torch {machine['torch']}, Python "
            f"{machine['python']}; matmul peak (4096^3, best of the run's two measurements) fp32 "
            f"{machine['peak_gflops']['fp32']:.0f} GFLOP/s, bf16 {machine['peak_gflops']['bf16']:.0f} "
            f"GFLOP/s; the whole run took {machine['minutes']:.0f} min.")
    parts = [head, table(rows, machine), "Targets of the performance issue:", targets(rows, machine)]
    if result["largest"]:
        parts += ["Largest config-B length M that runs one step under a 22 GB data limit:",
                  largest_table(result["largest"])]
    parts += [f"![{name}](img/{name})" for name in plots(rows, docs)]
    doc = docs / "benchmarks.md"
    text = doc.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    doc.write_text(text[:start] + "\n" + "\n\n".join(parts) + "\n" + text[end:])
