"""``save_pretrained(dir)`` / ``from_pretrained(dir)``: ``config.json`` + ``model.safetensors``.

Both files are written to temporary names and renamed into place, so a crash mid-write leaves
the previous checkpoint intact. Loading reads only JSON and safetensors: nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import typing
from pathlib import Path
from typing import Any

from safetensors.torch import load_model, save_model

from perceiver.config import REGISTRY, build, from_dict, to_dict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def current_umask() -> int:
    """The process's umask (the permissions that new files do not get)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's file is private (0600); saved files are not
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class PretrainedMixin:
    """Adds ``save_pretrained`` to a registered model whose ``config`` rebuilds it."""

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(to_dict(self.config), indent=2) + "\n"
        _atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_model(self, tmp))
        _atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))


def load_config(directory: str | os.PathLike):
    """The model config in ``directory/config.json``; every section of it (a nested component
    config: input, encoder, ...) must be there: a missing one would silently take defaults."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"directory: expected {CONFIG_NAME} in {str(directory)!r}, not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: expected a JSON model config, got unreadable text ({error})") from error
    if not isinstance(data, dict) or data.get("kind") not in REGISTRY:
        raise ValueError(f"{path}: expected a model config with a known 'kind', got "
                         f"{data.get('kind') if isinstance(data, dict) else type(data).__name__!r}")
    config_cls = REGISTRY[data["kind"]].Config
    hints = typing.get_type_hints(config_cls)
    sections = [f.name for f in dataclasses.fields(config_cls)
                if hints[f.name] is Any or dataclasses.is_dataclass(hints[f.name])]
    missing = [name for name in sections if name not in data]
    if missing:
        raise ValueError(f"{path}: expected the sections {sections}, missing {missing}")
    try:
        return from_dict(data)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from error


def refuse_pickles(directory: Path) -> None:
    """A directory holding pickle files is refused: they could be mistaken for (or swapped with)
    the safetensors weights, and loading them would run code."""
    pickles = sorted(p.name for p in Path(directory).glob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"directory: refusing to load {str(directory)!r}: it holds pickle files "
                         f"{pickles}; only JSON and safetensors files are read")


def from_pretrained(directory: str | os.PathLike, map_location: str = "cpu"):
    """Rebuild the model saved in ``directory`` (the right class, from ``config.json``)."""
    directory = Path(directory)
    refuse_pickles(directory)
    model = build(load_config(directory))
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise ValueError(f"directory: expected {WEIGHTS_NAME} in {str(directory)!r}, not found")
    load_model(model, str(weights), strict=True, device=map_location)
    return model.eval()
