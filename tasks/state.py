"""Training state on disk: safetensors and JSON only (nothing is unpickled), written atomically.

A checkpoint directory holds the model (``config.json`` + ``model.safetensors``, loadable with
``perceiver.from_pretrained``), ``optimizer.safetensors`` (the optimizer's per-parameter tensors
and the RNG states) and ``trainer.json`` (step, best metric, anything else JSON-able). It is
written next to its final place and renamed into it, so a crash mid-write leaves the previous
checkpoint loadable.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file

from perceiver.checkpoint import refuse_pickles

OPTIMIZER_NAME, TRAINER_NAME = "optimizer.safetensors", "trainer.json"


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    return tensors


def _set_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(directory: str | os.PathLike, model, optimizer_state: dict, trainer: dict) -> None:
    """Write ``model`` (whole, with ``save_pretrained``), ``optimizer_state`` (an optimizer's
    ``state_dict()``, whole), the RNG states and ``trainer`` to ``directory`` atomically."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tensors = _rng_tensors()
    for index, state in optimizer_state["state"].items():
        for name, value in state.items():
            tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    save_file(tensors, str(tmp / OPTIMIZER_NAME))
    (tmp / TRAINER_NAME).write_text(json.dumps(trainer, indent=2) + "\n")
    old = directory.with_name(directory.name + ".old")
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint at ``directory``, or the previous one if a save was cut off mid-rename."""
    directory = Path(directory)
    for candidate in (directory, directory.with_name(directory.name + ".old")):
        if (candidate / TRAINER_NAME).is_file():
            return candidate
    return None


def read_trainer(directory: str | os.PathLike) -> dict | None:
    """The trainer dict (step, best, ...) of the checkpoint at ``directory``; ``None`` if there is
    none."""
    found = find_checkpoint(directory)
    return None if found is None else json.loads((found / TRAINER_NAME).read_text())


def load_checkpoint(directory: str | os.PathLike, model) -> tuple[dict, dict]:
    """Restore the model's weights and the RNG states; return the optimizer's saved ``state`` (for
    ``Processes.load_optimizer_state``) and the trainer dict."""
    found = find_checkpoint(directory)
    if found is None:
        raise ValueError(f"resume: expected a checkpoint in {str(directory)!r}, found none")
    refuse_pickles(found)
    load_model(model, str(found / "model.safetensors"), strict=True)
    tensors = load_file(str(found / OPTIMIZER_NAME))
    state = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    _set_rng(tensors)
    return state, json.loads((found / TRAINER_NAME).read_text())
