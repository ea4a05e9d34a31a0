"""Checkpoints survive SIGKILL: a process killed while writing leaves the previous one loadable."""

import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from perceiver import presets
from perceiver.config import build
from tasks.state import find_checkpoint, load_checkpoint

WRITER = """
import sys, torch
from perceiver import presets
from perceiver.config import build
from tasks.state import save_checkpoint
torch.manual_seed(0)
model = build(presets.byte_classifier(num_classes=2, max_seq_len=64, dim=64, num_latents=16, latent_dim=256,
                                      num_layers=4, num_heads=4))
optimizer = torch.optim.AdamW(model.parameters())
model(torch.zeros(1, 8, dtype=torch.long)).logits.sum().backward()
optimizer.step()
step = 0
while True:
    step += 1
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(step)
    save_checkpoint(sys.argv[1], model, optimizer.state_dict(), {"step": step})
    print(step, flush=True)
"""


def test_a_writer_killed_at_random_moments_leaves_a_loadable_checkpoint(tmp_path):
    directory = tmp_path / "checkpoint"
    rng, interrupted = random.Random(0), 0
    model = build(presets.byte_classifier(num_classes=2, max_seq_len=64, dim=64, num_latents=16,
                                          latent_dim=256, num_layers=4, num_heads=4))
    for _ in range(5):
        process = subprocess.Popen([sys.executable, "-c", WRITER, str(directory)], stdout=subprocess.PIPE,
                                   text=True)
        assert process.stdout.readline().strip()  # a first checkpoint is complete
        time.sleep(rng.uniform(0.0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait()
        interrupted += any(p.name != "checkpoint" for p in tmp_path.iterdir())  # .tmp or .old left over
        found = find_checkpoint(directory)
        assert found is not None
        state, trainer = load_checkpoint(directory, model)
        step = trainer["step"]
        assert all(torch.all(p == step) for p in model.parameters())  # weights of that very step
        assert state and json.loads((found / "trainer.json").read_text())["step"] == step
    assert interrupted >= 2  # most kills land mid-write: writing is nearly all the writer does


def test_a_checkpoint_holding_a_pickle_is_refused(tmp_path):
    from tasks.state import save_checkpoint

    model = build(presets.byte_classifier(num_classes=2, max_seq_len=8, dim=8, num_latents=2, latent_dim=8,
                                          num_layers=1, num_heads=2))
    save_checkpoint(tmp_path / "checkpoint", model, torch.optim.AdamW(model.parameters()).state_dict(),
                    {"step": 1})
    assert load_checkpoint(tmp_path / "checkpoint", model)[1]["step"] == 1
    (tmp_path / "checkpoint" / "optimizer.pt").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match=r"refusing to load .* pickle files \['optimizer.pt'\]"):
        load_checkpoint(tmp_path / "checkpoint", model)
