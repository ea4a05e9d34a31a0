"""Training in 2 processes under torchrun (gloo on CPU): the same run as 1 process with the same
global batch, for DDP and FSDP2, and its checkpoint resumes in 1 process."""

import csv
import os
import subprocess
import sys

import datasets
import pytest
import torch
from safetensors.torch import load_file

from perceiver.cli import main


def train_losses(directory):
    with open(directory / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return [float(r["value"]) for r in rows if (r["split"], r["metric"]) == ("train", "loss")]


@pytest.fixture
def data(tmp_path):
    texts = [" ".join([t] * 40) for t in ("spam spam eggs", "ham and cheese", "eggs spam", "cheese ham")] * 12
    table = datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(48)]})
    datasets.DatasetDict(train=table, validation=table.select(range(16))).save_to_disk(str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_train_like_one_with_the_same_global_batch_and_resume_in_one(tmp_path, data, strategy):
    def args(out, *more):  # 512 bytes (truncated) in chunks of 300: embedded chunk by chunk, sharded
        return ["train", "classify", "--data", str(data), "--preset", "tiny", "--output-dir", str(out),
                "--quiet", "--max-steps", "6", "--strategy", strategy, "train.batch_size=16",
                "model.cross_chunk_size=300", "train.log_every=1", "train.eval_every=3", "train.save_every=3",
                "train.num_workers=0", *more]

    def torchrun(*arguments):
        env = os.environ | {"PERCEIVER_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   "-m", "perceiver", *arguments]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        results = [line for line in done.stdout.splitlines() if line.startswith('{"model": "latest"')]
        assert len(results) == 1  # rank 0's line only

    torchrun(*args(tmp_path / "two"))
    assert main(args(tmp_path / "one")) == 0
    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert len(one) == len(two) == 6 and one[0] != one[-1]
    assert one == pytest.approx(two, rel=1e-4)
    weights = [load_file(tmp_path / d / "model.safetensors") for d in ("one", "two")]
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:  # Adam turns rounding-level gradient differences into ~lr-relative ones
        torch.testing.assert_close(weights[0][k], weights[1][k], rtol=1e-3, atol=2e-4)
    # the 2-process checkpoint (consolidated) resumes in one process, and the other way round
    assert main(args(tmp_path / "two", "--resume", "--max-steps", "8")) == 0
    torchrun(*args(tmp_path / "one", "--resume", "--max-steps", "8"))
    one, two = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
    assert len(one) == len(two) == 8 and one == pytest.approx(two, rel=1e-3)


def test_unwrap_reaches_the_model_inside_ddp_and_compile(tmp_path):
    import torch.distributed as dist

    from perceiver.hip import build_hip
    from tasks.architectures import pad_to_length
    from tasks.distributed import unwrap
    from tasks.recipes import TINY_HIP

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = build_hip("mini", {"bytes": (32, 262)}, **TINY_HIP)
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        assert unwrap(wrapped) is model and unwrap(torch.compile(wrapped)) is model and unwrap(model) is model
        assert pad_to_length(wrapped, torch.zeros(2, 5, dtype=torch.long)).shape == (2, 32)
    finally:
        dist.destroy_process_group()
