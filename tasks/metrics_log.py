"""A run's metrics: ``metrics.csv`` (long form), TensorBoard event files and ``curves.png``.

    DIR/metrics.csv     step, split, metric, value
    DIR/tensorboard/    one scalar per (split, metric): ``tensorboard --logdir DIR``
    DIR/curves.png      one panel per metric, one line per split

On resume, rows (and TensorBoard events) after the checkpoint's step are dropped, so the files
describe the run an uninterrupted one would have written. TensorBoard and matplotlib are optional:
without them only the CSV is written (said once on stderr).
"""

from __future__ import annotations

import csv
import os
import sys
from collections import defaultdict
from pathlib import Path


def _summary_writer(directory: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("metrics: tensorboard is not installed; writing metrics.csv only", file=sys.stderr)
        return None
    return SummaryWriter(str(directory), purge_step=purge_step)


class MetricsLog:
    def __init__(self, directory: str | os.PathLike, keep_until: int | None = None, tensorboard: bool = True):
        directory = Path(directory)
        self.path, self.png = directory / "metrics.csv", directory / "curves.png"
        rows = []
        if keep_until is not None and self.path.exists():
            with self.path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until]
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, ["step", "split", "metric", "value"])
            writer.writeheader()
            writer.writerows(rows)
        purge = None if keep_until is None else keep_until + 1
        self.writer = _summary_writer(directory / "tensorboard", purge) if tensorboard else None

    def write(self, step: int, split: str, metrics: dict) -> None:
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerows([step, split, k, f"{v:.6g}"] for k, v in scalars.items())
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(f"{k}/{split}", v, step)
            self.writer.flush()

    def read(self) -> dict[str, dict[str, list[tuple[int, float]]]]:
        """``{metric: {split: [(step, value), ...]}}``."""
        series = defaultdict(lambda: defaultdict(list))
        with self.path.open() as f:
            for row in csv.DictReader(f):
                series[row["metric"]][row["split"]].append((int(row["step"]), float(row["value"])))
        return series

    def plot(self) -> Path | None:
        """Draw ``curves.png`` (replaced atomically); ``None`` without matplotlib or data."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            return None
        series = {k: v for k, v in self.read().items() if k not in ("lr", "examples_per_s")}
        if not series:
            return None
        columns = min(3, len(series))
        rows = -(-len(series) // columns)
        figure = Figure(figsize=(4.2 * columns, 3.0 * rows), layout="constrained")
        for i, (metric, splits) in enumerate(sorted(series.items())):
            axes = figure.add_subplot(rows, columns, i + 1)
            for split, points in sorted(splits.items()):
                steps, values = zip(*points, strict=True)
                axes.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=split)
            axes.set_title(metric)
            axes.set_xlabel("step")
            axes.legend(fontsize="small")
            axes.grid(alpha=0.3)
        tmp = self.png.with_name("curves.tmp.png")
        figure.savefig(tmp, dpi=90)
        tmp.replace(self.png)
        return self.png

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
