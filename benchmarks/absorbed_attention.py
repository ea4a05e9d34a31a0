"""Absorbed attention (``perceiver/absorbed_attention.py``) against projecting keys and values, in
one process, steps alternated between the two, medians of the paired ratios:

    .venv/bin/python benchmarks/absorbed_attention.py                    # all cases, 5 pairs each
    .venv/bin/python benchmarks/absorbed_attention.py --cases image --pairs 3

- kinetics: the ``multimodal`` bench step (DeepMind's Kinetics autoencoder, batch 1, fp32), and
  the same under CPU bf16 autocast;
- image: the encoder cross-attention layer of ``presets.image_classifier_fourier`` (512 x 1024
  latents over 224 x 224 pixels of 261 channels, one head), forward + backward;
- demo: ``make demo``'s model (``presets.multimodal_autoencoder``), batch 32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import perceiver.absorbed_attention as absorbed  # noqa: E402

PAYS = absorbed.absorbed_pays


def kinetics(bf16: bool):
    from impls import BUILDERS
    from run import CONFIGS, inputs

    model, run = BUILDERS["ours"](CONFIGS["multimodal"])
    x, loss_of = inputs(CONFIGS["multimodal"], torch.Generator().manual_seed(0))

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = run(x)
            loss = loss_of(out)
        loss.backward()
        return torch.cat([v.detach().float().flatten() for v in out.values()])
    return step


def image():
    from perceiver.layers import CrossAttentionLayer

    layer = CrossAttentionLayer(1024, 261, 1, qk_dim=1024, v_dim=1024)
    latents, pixels = torch.randn(1, 512, 1024, requires_grad=True), torch.randn(1, 224 * 224, 261)

    def step():
        layer.zero_grad(set_to_none=True)
        out = layer(latents, pixels)
        out.square().mean().backward()
        return out.detach()
    return step


def demo():
    from perceiver import PerceiverIO, presets

    model, b = PerceiverIO(presets.multimodal_autoencoder()), 32
    x = {"image": torch.randn(b, 1, 28, 28), "audio": torch.randn(b, 4096),
         "label": torch.eye(10)[torch.randint(0, 10, (b,))]}

    def step():
        model.zero_grad(set_to_none=True)
        out = model(x).logits
        sum(v.float().square().mean() for v in out.values()).backward()
        return torch.cat([v.detach().flatten() for v in out.values()])
    return step


CASES = {"kinetics": lambda: kinetics(False), "kinetics-bf16": lambda: kinetics(True), "image": image,
         "demo": demo}


def measure(step, pairs: int) -> dict:
    times, outs = {True: [], False: []}, {}
    for i in range(pairs + 1):  # the first pair warms up
        for on in (True, False) if i % 2 == 0 else (False, True):
            absorbed.absorbed_pays = PAYS if on else (lambda *a: False)
            start = time.perf_counter()
            outs[on] = step()
            times[on].append(time.perf_counter() - start)
    absorbed.absorbed_pays = PAYS
    diff = float((outs[True] - outs[False]).abs().max() / outs[False].abs().max())
    ratios = [a / b for a, b in zip(times[True][1:], times[False][1:], strict=True)]
    return dict(absorbed=statistics.median(times[True][1:]), projected=statistics.median(times[False][1:]),
                ratio=statistics.median(ratios), max_rel_diff=diff)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    for case in args.cases:
        r = measure(CASES[case](), args.pairs)
        print(f"{case}: absorbed {r['absorbed']:.3f} s, projected {r['projected']:.3f} s, paired ratio "
              f"{r['ratio']:.3f}, outputs differ by {r['max_rel_diff']:.1e} (of their largest)", flush=True)


if __name__ == "__main__":
    main()
