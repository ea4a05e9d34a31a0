"""The ``perceiver`` command line.

    perceiver convert SRC DST   # a transformers Perceiver checkpoint -> this package's format
    perceiver export SRC DST    # this package's model -> a transformers checkpoint directory
    perceiver info DIR          # the model class, config and parameter count of a saved model
    perceiver train TASK ...    # train a job (classify, mlm, autoencode, mae) into an output directory
    perceiver evaluate DIR      # its metrics as one JSON object
    perceiver predict DIR ...   # classify a text or a file, fill masked bytes, reconstruct a sample
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from perceiver.checkpoint import current_umask

# Every example below runs as written (tests/tasks/test_examples.py runs them in order in one
# folder holding ./hf-perceiver, a transformers checkpoint, ./my-dataset and notes.txt); hub ids
# are the exception: they need the network.
EPILOG = """examples:
  perceiver train classify --data listops --preset tiny --output-dir runs/tiny
  perceiver evaluate runs/tiny
  perceiver predict runs/tiny --text "[MAX 2 9 [MIN 4 7 ] 0 ]"
  perceiver info runs/tiny
  perceiver convert ./hf-perceiver ./converted      # a transformers checkpoint directory
  perceiver export ./converted ./converted-hf
  perceiver convert deepmind/language-perceiver ./language-perceiver     # a hub id, when online
"""
TRAIN_EPILOG = """examples (the tiny presets train in seconds; the README's results table gives the
real presets: listops, listops-depth, manpages, sotu, av-digits, ...):
  perceiver train classify --data listops --preset tiny --output-dir runs/tiny
  perceiver train classify --data listops --preset tiny --output-dir runs/tiny --resume --max-steps 40
  perceiver train classify --data listops --preset tiny --output-dir runs/tiny --overwrite train.lr=3e-4
  perceiver train classify --data ./my-dataset --preset tiny --output-dir runs/mine \\
      task.text_column=body task.label_column=y
  perceiver train classify --data listops --preset tiny --model hip-mini --output-dir runs/hip
  perceiver train mlm --data sotu --preset tiny --output-dir runs/mlm
  perceiver train autoencode --data av-digits --preset tiny --output-dir runs/av
  perceiver train mae --data av-digits --preset tiny --output-dir runs/mae
  torchrun --nproc-per-node 2 -m perceiver train mlm --data sotu --preset tiny --output-dir runs/ddp
a DIR that holds a run is refused unless --resume or --overwrite is given, and is locked while a
run writes to it. --resume with a larger --max-steps recomputes the cosine schedule over the new
length (the learning rate rises again from where the first run left it); train.decay_steps=N
keeps the first run's schedule (it stays at its floor after step N).
"""

EXPORT_DESCRIPTION = """\
Write a model saved by this package as a transformers checkpoint directory. transformers' heads
fix much of their architecture, so only models inside that space export:
  PerceiverForMaskedLM                 tokens in, tied token logits out; learned position queries
                                       (one per position, of the input width); decoder with 8 heads,
                                       qk 256, v = input width, no query residual, widening 1
  PerceiverForSequenceClassification   tokens in, one learned query of the latent width, decoder
                                       with 1 head, qk = v = latent width, query residual, widening 1
  PerceiverForImageClassification...   the same decoder over RGB images: Fourier positions (64
                                       bands, for 224 x 224), the conv stem (64 channels, 64 bands,
                                       'transformers' padding) or learned positions (conv1x1, 256
                                       channels and position width, a square image)
and everywhere: no cross-attention every block, the self-attention's v width = latent width, one
qk/v setting shared by the encoder's cross- and self-attention, the same activation and dropout in
encoder and decoder. Any other model is refused, naming the field and the value transformers needs
(models converted from transformers export back)."""


def check_target(src: str, dst: str, overwrite: bool) -> Path:
    """``dst`` for a command that writes a model directory from ``src``: never ``src`` itself or a
    folder inside it, and an existing non-empty one only with ``--overwrite``."""
    target, source = Path(dst).resolve(), Path(src).resolve()
    if Path(src).exists() and (target == source or source in target.parents):
        raise ValueError(f"DST: expected a directory outside the source {src!r}, got {dst!r}")
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise ValueError(f"DST: {dst!r} exists and is not empty; pass --overwrite to replace it")
    return target


def write_directory(target: Path, write) -> None:
    """``write(tmp)`` into a fresh folder beside ``target``, then swapped into place: a failure
    leaves ``target`` as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.new-"))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's folder is private (0700)
    old = tmp.with_name(tmp.name.replace(".new-", ".old-"))
    try:
        write(tmp)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def convert(args) -> None:
    from perceiver.convert import from_transformers

    target = check_target(args.src, args.dst, args.overwrite)
    model = from_transformers(args.src, image_shape=args.image_shape, match=args.match)
    write_directory(target, model.save_pretrained)
    print(f"wrote {args.dst} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")


def export(args) -> None:
    from perceiver import from_pretrained
    from perceiver.convert import to_transformers

    target = check_target(args.src, args.dst, args.overwrite)
    hf_model = to_transformers(from_pretrained(args.src))
    write_directory(target, hf_model.save_pretrained)
    print(f"wrote {args.dst} ({type(hf_model).__name__})")


def info(args) -> None:
    from perceiver import from_pretrained, to_dict

    model = from_pretrained(args.dir)
    print(json.dumps({"class": type(model).__name__,
                      "parameters": sum(p.numel() for p in model.parameters()),
                      "config": to_dict(model.config)}, indent=2))


def train(args) -> int:
    from tasks.engine import Stopped
    from tasks.recipes import run_train, settings_for

    overrides = list(args.overrides) + ([f"train.save_every={args.save_every}"] if args.save_every else [])
    overrides += [f"train.strategy={args.strategy}"] if args.strategy else []
    settings = settings_for(args.task, args.data, args.preset, overrides, args.config, args.seed,
                            args.max_steps, args.model)
    try:
        metrics = run_train(settings, args.output_dir, resume=args.resume, overwrite=args.overwrite,
                            progress=not args.quiet)
    except Stopped as stop:  # by SIGTERM / SIGINT, after saving a checkpoint
        print(f"perceiver train: {stop}", file=sys.stderr)
        return 128 + stop.signum
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one line for the run
        report = {"model": "latest", "split": "validation", "step": settings["train"]["max_steps"]}
        print(json.dumps(report | {k: v for k, v in metrics.items() if k != "confusion"}))
    return 0


def evaluate(args) -> None:
    from tasks.recipes import run_evaluate

    print(json.dumps(run_evaluate(args.dir, args.model)))


def predict(args) -> None:
    from perceiver import from_pretrained
    from tasks.recipes import load_run, predictor

    task = predictor(load_run(args.dir))
    model = from_pretrained(f"{args.dir}/best")
    if hasattr(task, "predict_files"):  # autoencode: image + audio pairs
        if not args.sample:
            raise ValueError("predict: expected --sample STEM (reads STEM.png and STEM.wav)")
        for prediction in task.predict_files(model, args.sample, args.out or f"{args.dir}/predictions"):
            print(json.dumps(prediction))
        return
    texts = list(args.text or [])
    for path in args.file or []:
        try:
            texts.append(open(path, encoding="utf-8").read())
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"--file: cannot read {path!r} as UTF-8 text: {error}") from error
    if not texts:
        raise ValueError("predict: expected --text or --file")
    for prediction in task.predictions(model, texts):
        print(json.dumps(prediction))


def build_parser() -> argparse.ArgumentParser:
    """The ``perceiver`` command line's parser, with every subcommand."""
    parser = argparse.ArgumentParser(prog="perceiver", description="Perceiver IO tools",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("convert", help="convert a transformers Perceiver checkpoint",
                            description="Convert a transformers Perceiver checkpoint directory (or a hub "
                                        "id, when online) into config.json + model.safetensors.")
    p.add_argument("src", help="transformers checkpoint directory or hub id")
    p.add_argument("dst", help="output directory (loadable with perceiver.from_pretrained)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("--image-shape", type=int, nargs=2, metavar=("H", "W"),
                   help="input image size of an image classifier (default: its config.image_size)")
    p.add_argument("--match", choices=["transformers", "jax"], default="transformers",
                   help="reproduce transformers' logits (default) or DeepMind's JAX code (tanh GELU, "
                        "'SAME' conv padding)")
    p.set_defaults(run=convert)
    p = commands.add_parser("export", help="export a model to a transformers checkpoint",
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            description=EXPORT_DESCRIPTION)
    p.add_argument("src", help="directory written by save_pretrained")
    p.add_argument("dst", help="output directory (loadable with transformers' from_pretrained)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.set_defaults(run=export)
    p = commands.add_parser("train", help="train a job", epilog=TRAIN_EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            description="Train a job into DIR: the latest model (perceiver."
                                        "from_pretrained(DIR)), checkpoint/ for --resume, best/, "
                                        "metrics.csv and run.json.")
    p.add_argument("task", choices=["classify", "mlm", "autoencode", "mae"], help="the job")
    p.add_argument("--data", required=True, help="classify: listops, a datasets directory or a hub name "
                                                 "(online); mlm: sotu, a text file or a directory of .txt; "
                                                 "autoencode, mae: av-digits or a folder DIR/{train,"
                                                 "validation,test}/{class}/NAME.png + NAME.wav")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--preset", default="tiny",
                   help="named settings (classify: tiny, listops, manpages; mlm: tiny, sotu; autoencode: "
                        "tiny, demo, av-digits; mae: tiny, av-digits, av-digits-small)")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--save-every", type=int, metavar="N", help="write a checkpoint every N steps "
                   "(train.save_every); SIGTERM / SIGINT also write one, then stop")
    p.add_argument("--strategy", choices=["ddp", "fsdp"], help="under torchrun: replicate the model "
                   "(ddp, the default) or shard it (fsdp, FSDP2); train.batch_size stays the global batch")
    p.add_argument("--model", help="classify, mlm: perceiver-io (default) or a HiP: hip-mini, hip-16, "
                                   "hip-256, hip-16x3; mae: a HiP (default hip-mini)")
    p.add_argument("--config", help="JSON file with {'task': {...}, 'train': {...}} settings")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint exactly; a larger "
                   "--max-steps stretches the cosine over the new length (train.decay_steps=N keeps it)")
    p.add_argument("--overwrite", action="store_true", help="replace the run in DIR (its files are deleted)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="section.key=value (sections: task, train, model)")
    p.set_defaults(run=train)
    p = commands.add_parser("evaluate", help="print a trained job's metrics as JSON",
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            description="Metrics of DIR's best (or latest) model on the validation and test "
                                        "splits, as one JSON object.",
                            epilog="examples:\n  perceiver evaluate runs/tiny\n"
                                   "  perceiver evaluate runs/av --model latest")
    p.add_argument("dir", help="output directory of perceiver train")
    p.add_argument("--model", choices=["best", "latest"], default="best")
    p.set_defaults(run=evaluate)
    p = commands.add_parser("predict", help="apply a trained job: classify texts or files, fill '_' bytes, "
                                            "reconstruct image + audio samples",
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            description="Apply DIR's best model; one JSON line per input.",
                            epilog="examples:\n"
                                   "  perceiver predict runs/tiny --text \"[MAX29[MIN47]0]\"\n"
                                   "  perceiver predict runs/mine --file notes.txt --text \"more notes\"\n"
                                   "  perceiver predict runs/mlm --text \"The ________ of the Union\"\n"
                                   "  perceiver predict runs/av --sample runs/av/samples/0-0-original "
                                   "--out recon/\n"
                                   "(runs/av/samples/ holds validation examples, written after training)")
    p.add_argument("dir", help="output directory of perceiver train")
    p.add_argument("--text", action="append", help="a text to classify (repeatable)")
    p.add_argument("--file", action="append", help="a UTF-8 file to classify (repeatable)")
    p.add_argument("--sample", action="append", help="autoencode: STEM of STEM.png + STEM.wav (repeatable)")
    p.add_argument("--out", help="autoencode: folder for the reconstructions (default DIR/predictions)")
    p.set_defaults(run=predict)
    p = commands.add_parser("info", help="describe a saved model")
    p.add_argument("dir", help="directory written by save_pretrained")
    p.set_defaults(run=info)
    return parser


def main(argv=None) -> int:
    # datasets' progress bars (building and caching the data) are noise here; =0 shows them
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # overrides may follow the options of train
    if extra and (args.command != "train" or any("=" not in e or e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    try:
        return args.run(args) or 0
    except ValueError as error:  # a bad argument, setting or file, refused before work began
        print(f"perceiver {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # a second SIGINT / SIGTERM, or Ctrl-C outside training
        print(f"perceiver {args.command}: interrupted{f' ({interrupt})' if str(interrupt) else ''}",
              file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - any failure: one line and a non-zero status
        print(f"perceiver {args.command}: error: {type(error).__name__}: {error}", file=sys.stderr)
        if os.environ.get("PERCEIVER_TRACEBACK"):
            raise
        return 1


if __name__ == "__main__":
    sys.exit(main())
