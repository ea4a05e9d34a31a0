"""The ``perceiver`` command line.

    perceiver convert SRC DST   # a transformers Perceiver checkpoint -> this package's format
    perceiver export SRC DST    # this package's model -> a transformers checkpoint directory
    perceiver info DIR          # the model class, config and parameter count of a saved model
"""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """examples:
  perceiver convert deepmind/language-perceiver ./language-perceiver     # hub id, when online
  perceiver convert ./vision-perceiver-conv ./vision-conv --image-shape 224 224
  perceiver info ./language-perceiver
  perceiver export ./language-perceiver ./language-perceiver-hf
"""


def convert(args) -> None:
    from perceiver.convert import from_transformers

    model = from_transformers(args.src, image_shape=args.image_shape, match=args.match)
    model.save_pretrained(args.dst)
    print(f"wrote {args.dst} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")


def export(args) -> None:
    from perceiver import from_pretrained
    from perceiver.convert import to_transformers

    hf_model = to_transformers(from_pretrained(args.src))
    hf_model.save_pretrained(args.dst)
    print(f"wrote {args.dst} ({type(hf_model).__name__})")


def info(args) -> None:
    from perceiver import from_pretrained, to_dict

    model = from_pretrained(args.dir)
    print(json.dumps({"class": type(model).__name__,
                      "parameters": sum(p.numel() for p in model.parameters()),
                      "config": to_dict(model.config)}, indent=2))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="perceiver", description="Perceiver IO tools",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("convert", help="convert a transformers Perceiver checkpoint",
                            description="Convert a transformers Perceiver checkpoint directory (or a hub "
                                        "id, when online) into config.json + model.safetensors.")
    p.add_argument("src", help="transformers checkpoint directory or hub id")
    p.add_argument("dst", help="output directory (loadable with perceiver.from_pretrained)")
    p.add_argument("--image-shape", type=int, nargs=2, metavar=("H", "W"),
                   help="input image size of an image classifier (default: its config.image_size)")
    p.add_argument("--match", choices=["transformers", "jax"], default="transformers",
                   help="reproduce transformers' logits (default) or DeepMind's JAX code (tanh GELU, "
                        "'SAME' conv padding)")
    p.set_defaults(run=convert)
    p = commands.add_parser("export", help="export a model to a transformers checkpoint",
                            description="Write a masked LM or classifier saved by this package as a "
                                        "transformers checkpoint directory (PerceiverFor... heads).")
    p.add_argument("src", help="directory written by save_pretrained")
    p.add_argument("dst", help="output directory (loadable with transformers' from_pretrained)")
    p.set_defaults(run=export)
    p = commands.add_parser("info", help="describe a saved model")
    p.add_argument("dir", help="directory written by save_pretrained")
    p.set_defaults(run=info)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except ValueError as error:
        print(f"perceiver {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
