"""Benchmark: what the nesting-depth positions cost a ListOps training step.

    .venv/bin/python benchmarks/listops_step.py              # 8 alternations, batch 32
    .venv/bin/python benchmarks/listops_step.py --repeats 3 --batch-size 8

The listops preset's model (``tasks.recipes``) with and without ``depth_brackets="[]"``
(``perceiver.inputs.text.NestingDepth``), one forward + backward + AdamW step each on the same
batch of generated ListOps texts in the dense byte form, alternated in one process after a
warm-up; prints the median step time of each and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from perceiver import PerceiverIO, presets, tokenizer
from tasks import listops

PRESET = dict(num_classes=10, max_seq_len=3072, dim=128, num_latents=128, latent_dim=256, num_layers=4,
              num_heads=4)


def batch(size: int, seed: int = 0):
    """``size`` ListOps examples (``tasks.listops.generate``) in the dense form: ids, mask, labels."""
    data = listops.generate(size, seed)
    ids, mask = tokenizer.batch_encode([listops.dense(s) for s in data["Source"]], PRESET["max_seq_len"])
    return ids, mask, torch.tensor(data["Target"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8, help="timed steps of each model")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    ids, mask, labels = batch(args.batch_size)
    models = {name: PerceiverIO(presets.byte_classifier(**PRESET, depth_brackets=brackets))
              for name, brackets in (("plain", ""), ("depth", "[]"))}
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}

    def step(name: str) -> float:
        start = time.perf_counter()
        loss = F.cross_entropy(models[name](ids, attention_mask=mask).logits, labels)
        optimizers[name].zero_grad()
        loss.backward()
        optimizers[name].step()
        return time.perf_counter() - start

    for name in models:  # warm-up
        step(name)
    times = {name: [] for name in models}
    for _ in range(args.repeats):
        for name in models:
            times[name].append(step(name))
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"batch {args.batch_size} x {ids.shape[1]} bytes, {torch.get_num_threads()} threads, "
          f"{args.repeats} steps each (medians)")
    for name, t in median.items():
        print(f"  {name}: {t:.3f} s")
    print(f"  depth / plain: {median['depth'] / median['plain']:.3f}")


if __name__ == "__main__":
    main()
