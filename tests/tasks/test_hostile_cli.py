"""The command line used carelessly or with hostile arguments. Every case asserts the exit status,
the message, and that the files on disk are unchanged (or, for a run that did its work, complete).
What only a real process shows (exiting, signals, two runs at once) runs in subprocesses as a user
runs it; the rest calls ``perceiver.cli.main`` in this process, which returns the exit status."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from perceiver.checkpoint import current_umask
from perceiver.cli import main

TINY = ["--preset", "tiny", "--quiet"]


def perceiver(*args, cwd=None, timeout=120, env=None):
    """``python -m perceiver ARGS`` -> CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-m", "perceiver", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env or ENV)


def snapshot(directory: Path) -> dict:
    """Every file under ``directory``: its relative path -> (sha256, mode)."""
    return {str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
            for p in sorted(directory.rglob("*")) if p.is_file()}


ENV = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The environment of every call, here and in subprocesses: offline, with a shared
    $PERCEIVER_CACHE for generated data."""
    ENV["PERCEIVER_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PERCEIVER_CACHE", ENV["PERCEIVER_CACHE"])
        yield ENV


@pytest.fixture
def cli(env, capsys):
    """``cli(*args)`` -> ``(exit status, stdout, stderr)`` of ``perceiver ARGS`` in this process."""
    def call(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return call


@pytest.fixture(scope="module")
def finished(env, tmp_path_factory):
    """A finished tiny classify run (20 steps)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "classify", "--data", "listops", *TINY, "--output-dir", str(out)]) == 0
    return out


@pytest.fixture
def run_copy(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def test_a_failed_run_exits_at_once_with_the_default_data_worker(env, tmp_path):
    began = time.monotonic()
    done = perceiver("train", "classify", "--data", "listops", *TINY, "--output-dir", tmp_path / "nan",
                     "train.lr=1e30", "train.num_workers=1", timeout=90)
    assert done.returncode == 1
    assert "FloatingPointError: step 2: loss is nan" in done.stderr
    assert "No checkpoint was written (the first was due at step 10)" in done.stderr
    assert "Traceback" not in done.stderr and time.monotonic() - began < 60
    assert "Saving the dataset" not in done.stderr  # datasets' progress bars, hidden (it built listops)
    assert not (tmp_path / "nan" / "checkpoint").exists() and not (tmp_path / "nan" / "run.lock").exists()


FAILING_WORKER = """
import sys
import torch
from tests.tasks.test_engine import CONFIG, CountTask
from tasks.engine import train
import dataclasses

class BadRecord(CountTask):
    def train_batch(self, indices, generator):
        if 5 in indices:
            raise ValueError("record 5 is damaged")
        return super().train_batch(indices, generator)

train(BadRecord(), dataclasses.replace(CONFIG, num_workers=2), sys.argv[1], progress=False)
"""


def test_an_exception_in_a_data_worker_ends_the_process(env, tmp_path):
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", FAILING_WORKER, str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=90, env=env, cwd=Path(__file__).parents[2])
    assert done.returncode == 1 and "record 5 is damaged" in done.stderr
    assert time.monotonic() - began < 60 and not (tmp_path / "out" / "run.lock").exists()


@pytest.mark.parametrize("setting, message", [
    ("train.batch_size=0", "train.batch_size: expected an integer >= 1, got 0"),
    ("train.batch_size=-4", "train.batch_size: expected an integer >= 1, got -4"),
    ("train.lr=abc", "train.lr: expected a number > 0, got 'abc'"),
    ("train.lr=0", "train.lr: expected a number > 0, got 0"),
    ("train.max_steps=2.5", "train.max_steps: expected an integer >= 1, got 2.5"),
    ("train.num_workers=-1", "train.num_workers: expected an integer >= 0, got -1"),
    ("train.device=gpu", "train.device: expected auto, cpu, cuda, cuda:N or mps, got 'gpu'"),
    ("model.dropout=5.0", "model.encoder.dropout: expected a probability in [0, 1), got 5.0"),
    ("model.num_latents=0", "model.encoder.num_latents: expected an integer >= 1, got 0"),
    ("task.max_seq_len=0", "task.max_seq_len: expected an integer >= 1, got 0"),
    ("task.data_sizes=5", "task.data_sizes: expected {split: examples}"),
    ("task.nonsense=1", "override: unknown key 'task.nonsense'"),
])
def test_bad_settings_are_refused_up_front_naming_them(cli, tmp_path, setting, message):
    code, _, err = cli("train", "classify", "--data", "listops", *TINY, "--output-dir", tmp_path / "out",
                       setting)
    assert code == 2 and message in err, err
    assert not (tmp_path / "out").exists()  # nothing was written


def test_bad_settings_in_a_real_process_exit_with_status_2(env, tmp_path):
    done = perceiver("train", "classify", "--data", "listops", *TINY, "--output-dir", tmp_path / "out",
                     "train.batch_size=0", timeout=60)
    assert done.returncode == 2 and "train.batch_size: expected an integer >= 1, got 0" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_negative_max_steps_and_a_resume_to_fewer_steps_are_refused(cli, run_copy, tmp_path):
    code, _, err = cli("train", "classify", "--data", "listops", *TINY, "--output-dir", tmp_path / "x",
                       "--max-steps", -5)
    assert code == 2 and "train.max_steps: expected an integer >= 1, got -5" in err
    before = snapshot(run_copy)
    code, _, err = cli("train", "classify", "--data", "listops", *TINY, "--output-dir", run_copy, "--resume",
                       "--max-steps", 5)
    assert code == 2 and "--max-steps: expected at least the 20 steps already done" in err
    assert snapshot(run_copy) == before  # run.json included


def test_training_into_a_finished_run_is_refused_unless_resumed_or_overwritten(cli, run_copy):
    before = snapshot(run_copy)
    code, _, err = cli("train", "classify", "--data", "listops", *TINY, "--output-dir", run_copy, "--seed", 3)
    assert code == 2 and "holds a run" in err and "--resume" in err and "--overwrite" in err
    assert snapshot(run_copy) == before
    (run_copy / "notes.txt").write_text("mine")
    code, out, err = cli("train", "classify", "--data", "listops", *TINY, "--output-dir", run_copy,
                         "--seed", 3, "--overwrite", "--max-steps", 10)
    assert code == 0, err
    run = json.loads((run_copy / "run.json").read_text())
    assert run["train"]["seed"] == 3 and run["train"]["max_steps"] == 10
    assert (run_copy / "notes.txt").read_text() == "mine"  # only the run's own files were replaced
    assert json.loads((run_copy / "checkpoint" / "trainer.json").read_text())["step"] == 10
    last = json.loads(out.strip().splitlines()[-1])
    assert (last["model"], last["split"], last["step"]) == ("latest", "validation", 10)


def test_a_directory_in_use_is_refused_naming_the_holder_and_a_stale_lock_is_reclaimed(cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = {"pid": os.getpid(), "host": os.uname().nodename, "since": time.time(), "token": "x"}
    (out / "run.lock").write_text(json.dumps(holder))  # this live process holds it
    code, _, err = cli("train", "classify", "--data", "listops", *TINY, "--output-dir", out, "--max-steps", 2)
    assert code == 2 and f"in use by process {os.getpid()}" in err
    assert sorted(p.name for p in out.iterdir()) == ["run.lock"]
    killed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    killed.kill()
    killed.wait()
    (out / "run.lock").write_text(json.dumps(holder | {"pid": killed.pid}))  # SIGKILL left it behind
    code, _, err = cli("train", "classify", "--data", "listops", *TINY, "--output-dir", out, "--max-steps", 2)
    assert code == 0, err
    assert f"reclaimed the stale lock of process {killed.pid}" in err
    assert not (out / "run.lock").exists() and (out / "checkpoint").is_dir()


def test_two_runs_started_together_into_one_directory(env, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "perceiver", "train", "classify", "--data", "listops", *TINY,
               "--output-dir", str(out), "--max-steps", "4"]
    runs = [subprocess.Popen(command + ["--seed", str(s)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env) for s in (1, 2)]
    results = [(r.wait(timeout=120), r.communicate()[1]) for r in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    seed = [s for s, (code, _) in zip((1, 2), results, strict=True) if code == 0][0]
    refused = [err for code, err in results if code == 2][0]
    assert "in use by process" in refused or "holds a run" in refused
    assert json.loads((out / "run.json").read_text())["train"]["seed"] == seed
    steps = [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(steps, key=int)  # one run's rows, in order


def test_a_second_sigint_exits_at_once(env, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "perceiver", "train", "classify", "--data", "listops",
                                *TINY, "--output-dir", str(out), "--max-steps", "100000",
                                "train.eval_every=100000", "train.save_every=100000"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 90
    while not (out / "metrics.csv").exists() and time.monotonic() < deadline:  # training has begun
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    began = time.monotonic()
    code = process.wait(timeout=30)
    assert time.monotonic() - began < 15
    err = process.stderr.read()
    assert code == 130 and ("SIGINT received twice" in err or "stopped by SIGINT" in err), err
    assert not (out / "run.lock").exists()


def test_convert_refuses_its_source_and_an_existing_target(cli, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.PerceiverConfig(num_latents=4, d_latents=16, d_model=8,
                                          num_self_attends_per_block=1, num_self_attention_heads=2,
                                          num_cross_attention_heads=2, max_position_embeddings=16)
    transformers.PerceiverForMaskedLM(config).save_pretrained(tmp_path / "hf")
    before = snapshot(tmp_path / "hf")
    for dst in (tmp_path / "hf", tmp_path / "hf" / "inside"):
        code, _, err = cli("convert", tmp_path / "hf", dst)
        assert code == 2 and "outside the source" in err
    assert snapshot(tmp_path / "hf") == before
    assert cli("convert", tmp_path / "hf", tmp_path / "ours")[0] == 0
    converted = snapshot(tmp_path / "ours")
    # not mkstemp's 0600
    assert all(mode & 0o777 == 0o666 & ~current_umask() for _, mode in converted.values())
    code, _, err = cli("convert", tmp_path / "hf", tmp_path / "ours")
    assert code == 2 and "pass --overwrite" in err and snapshot(tmp_path / "ours") == converted
    assert cli("convert", tmp_path / "hf", tmp_path / "ours", "--overwrite")[0] == 0
    (tmp_path / "hf" / "model.safetensors").unlink()
    (tmp_path / "hf" / "pytorch_model.bin").write_bytes(b"a pickle would be here")
    code, _, err = cli("convert", tmp_path / "hf", tmp_path / "bin")
    assert code == 2 and "convert them to safetensors with transformers first" in err
    assert "pytorch_model.bin" in err and not (tmp_path / "bin").exists()


def test_export_refuses_a_run_directory_and_its_source(cli, run_copy):
    before = snapshot(run_copy)
    code, _, err = cli("export", run_copy / "best", run_copy)
    assert code == 2 and "pass --overwrite" in err
    code, _, err = cli("export", run_copy, run_copy)
    assert code == 2 and "outside the source" in err
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "config.json").write_text("{not json"), "expected a JSON model config"),
    (lambda d: (d / "config.json").write_text(json.dumps(
        {k: v for k, v in json.loads((d / "config.json").read_text()).items() if k != "decoder"})),
     "missing ['decoder']"),
    (lambda d: (d / "config.json").write_text("[1, 2]"), "expected a model config with a known 'kind'"),
])
def test_a_damaged_config_is_named(cli, run_copy, damage, message):
    damage(run_copy)
    code, _, err = cli("info", run_copy)
    assert code == 2 and message in err and "config.json" in err, err


def test_missing_or_empty_data_folders_are_named(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    for data, message in [(tmp_path / "empty", "it is empty"), (tmp_path / "absent", "is not there"),
                          ("./absent", "is not there")]:
        code, _, err = cli("train", "classify", "--data", data, *TINY, "--output-dir", tmp_path / "out")
        assert code == 2 and message in err and "data: expected listops" in err
    root = tmp_path / "av"
    for split in ("train", "validation"):
        (root / split / "cat").mkdir(parents=True)
    code, _, err = cli("train", "autoencode", "--data", root, *TINY, "--output-dir", tmp_path / "out")
    assert code == 2 and "found none" in err and str(root / "train" / "cat") in err
    assert not (tmp_path / "out").exists()


def test_string_labels_become_classes_whose_names_are_predicted(cli, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"text": ["good " * (i % 5 + 1) if i % 2 else "bad " * (i % 3 + 1) for i in range(64)],
            "label": ["pos" if i % 2 else "neg" for i in range(64)]}
    odd = rows | {"label": ["neg"] * 63 + ["odd"]}  # a class the train split lacks
    data = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                                 "validation": datasets.Dataset.from_dict(odd)})
    data.save_to_disk(str(tmp_path / "data"))
    args = ["train", "classify", "--data", tmp_path / "data", *TINY, "--max-steps", 4]
    code, _, err = cli(*args, "--output-dir", tmp_path / "refused")
    assert code == 2 and "a class the train split lacks, expected one of ['neg', 'pos']" in err
    code, _, err = cli(*args, "--output-dir", tmp_path / "out", "task.skip_bad=true")
    assert code == 0, err
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["label_names"] == ["neg", "pos"] and run["skipped_records"] == 1
    code, out, _ = cli("predict", tmp_path / "out", "--text", "good good")
    prediction = json.loads(out)
    assert code == 0 and prediction["label"] == ["neg", "pos"][prediction["label_id"]]
