"""Every example of the README's training section and of ``perceiver --help`` runs as written, in
order, in one folder that holds what the examples name as the user's own: a transformers
checkpoint (./hf-perceiver), a datasets directory (./my-dataset) and a text file (notes.txt).
Hub ids are skipped: they need the network. The generated data is built small (the listops and
av-digits folders of $PERCEIVER_CACHE), so the commands are the user's but the run takes a minute."""

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from perceiver.cli import main

README = Path(__file__).parents[2] / "README.md"


def readme_examples() -> list[str]:
    """The lines of the bash block in the README's "Training jobs" section."""
    section = README.read_text().split("## Training jobs", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def help_examples() -> list[str]:
    """The example lines of every ``--help`` epilog, the top-level one first."""
    import perceiver.cli as cli

    parser = cli.build_parser()
    epilogs = [parser.epilog]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            epilogs += [sub.epilog for sub in action.choices.values() if sub.epilog]
    text = "\n".join(epilogs).replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line.startswith(("perceiver ", "torchrun "))]


def commands(lines: list[str]) -> list[list[str]]:
    out = []
    for line in lines:
        line = line.replace("\\\n", " ")
        if "when online" in line:
            continue
        words = shlex.split(line, comments=True)
        if words and words not in out:
            out.append(words)
    return out


@pytest.fixture
def folder(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    transformers = pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PERCEIVER_CACHE", str(tmp_path / "cache"))
    rows = {"body": [("yes " if i % 2 else "no ") * (i % 7 + 1) for i in range(64)],
            "y": [i % 2 for i in range(64)]}
    datasets.DatasetDict({split: datasets.Dataset.from_dict(rows) for split in ("train", "validation")}
                         ).save_to_disk("my-dataset")
    config = transformers.PerceiverConfig(num_latents=4, d_latents=16, d_model=8,
                                          num_self_attends_per_block=1, num_self_attention_heads=2,
                                          num_cross_attention_heads=2, max_position_embeddings=16)
    transformers.PerceiverForMaskedLM(config).save_pretrained("hf-perceiver")
    Path("notes.txt").write_text("yes yes yes\n")
    from tasks import av_digits  # the av-digits folder, built small where the jobs look for it

    sizes = {"train": 200, "validation": 50, "test": 20}
    av_digits.build(tmp_path / "cache" / "av-digits-seed0", sizes=sizes)
    return tmp_path


def test_the_examples_are_found():
    readme, helps = commands(readme_examples()), commands(help_examples())
    assert len(readme) >= 8 and len(helps) >= 15
    assert all(re.fullmatch(r"perceiver|torchrun", words[0]) for words in readme + helps)


@pytest.mark.slow
def test_readme_and_help_examples_run_as_written(folder, capsys):
    for words in commands(readme_examples()) + commands(help_examples()):
        if words[0] == "torchrun":
            done = subprocess.run([sys.executable, "-m", "torch.distributed.run", *words[1:]],
                                  capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, (words, done.stderr[-2000:])
            continue
        if words[:2] == ["perceiver", "train"] and Path(words[words.index("--output-dir") + 1]).is_dir() \
                and not {"--resume", "--overwrite"} & set(words):
            continue  # the same run twice (README and --help): the second is refused, by design
        code = main(words[1:])
        assert code == 0, (words, capsys.readouterr().err[-2000:])
