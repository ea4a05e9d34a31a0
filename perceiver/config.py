"""Dataclass configs that round-trip through JSON, and the registry that rebuilds modules from them.

Every swappable part (input adapter, query provider, output adapter, model) is a module class with
a nested ``Config`` dataclass, registered under a short ``kind`` name::

    @register("tokens")
    class TokenInputAdapter(nn.Module):
        @dataclass
        class Config: ...

``to_dict(config)`` writes ``{"kind": ..., field: value, ...}`` (nested configs likewise), and
``from_dict`` reads it back into the same dataclasses; ``build(config)`` makes the module.
Tuples are written as JSON lists and read back as tuples, so configs should use tuples, not lists.
"""

from __future__ import annotations

import dataclasses
from typing import Any

REGISTRY: dict[str, type] = {}


def register(kind: str):
    """Class decorator: make ``cls`` buildable from ``cls.Config`` and loadable by ``kind``."""

    def decorate(cls):
        if kind in REGISTRY:
            raise ValueError(f"kind {kind!r} is already registered by {REGISTRY[kind].__name__}")
        cls.Config.kind = kind
        REGISTRY[kind] = cls
        return cls

    return decorate


def build(config):
    """The module for a registered ``config``."""
    kind = getattr(type(config), "kind", None)
    if kind not in REGISTRY:
        raise ValueError(f"config: expected a registered component config, got {type(config).__name__}")
    return REGISTRY[kind](config)


def to_dict(value: Any) -> Any:
    """JSON-ready form of a config (recursing into nested configs, dicts, tuples)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {"kind": type(value).kind} if hasattr(type(value), "kind") else {}
        for field in dataclasses.fields(value):
            out[field.name] = to_dict(getattr(value, field.name))
        return out
    if isinstance(value, dict):
        return {str(k): to_dict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_dict(v) for v in value]
    return value


def from_dict(data: Any) -> Any:
    """Inverse of :func:`to_dict`: dicts with a ``kind`` become that component's ``Config``."""
    if isinstance(data, list):
        return tuple(from_dict(v) for v in data)
    if not isinstance(data, dict):
        return data
    if "kind" not in data:
        return {k: from_dict(v) for k, v in data.items()}
    kind = data["kind"]
    if kind not in REGISTRY:
        raise ValueError(f"config kind: expected one of {sorted(REGISTRY)}, got {kind!r}")
    config_cls = REGISTRY[kind].Config
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(data) - names - {"kind"})
    if unknown:
        raise ValueError(f"config for {kind!r}: unknown fields {unknown}")
    values = {name: from_dict(value) for name, value in data.items() if name != "kind"}
    return config_cls(**values)
