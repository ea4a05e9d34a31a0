"""Dataclass configs that round-trip through JSON, and the registry that rebuilds modules from them.

Every swappable part (input adapter, query provider, output adapter, model) is a module class with
a nested ``Config`` dataclass, registered under a short ``kind`` name::

    @register("tokens")
    class TokenInputAdapter(nn.Module):
        @dataclass
        class Config: ...

``to_dict(config)`` writes ``{"kind": ..., field: value, ...}`` (nested configs likewise), and
``from_dict`` reads it back into the same dataclasses; ``build(config)`` checks every value
against its field's annotation (``validate``) and makes the module. Tuples are written as JSON
lists and read back as tuples, so configs should use tuples, not lists.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
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
    """The module for a registered ``config`` (validated first)."""
    kind = getattr(type(config), "kind", None)
    if kind not in REGISTRY:
        raise ValueError(f"config: expected a registered component config, got {type(config).__name__}")
    validate(config)
    return REGISTRY[kind](config)


# fields that are a probability of dropping something: in [0, 1), whatever config they are in
PROBABILITIES = ("dropout", "drop_path", "residual_dropout")
# integer fields that may be 0; every other integer (a size, a count of heads or layers, a shape)
# is at least 1
MAY_BE_ZERO = ("num_bands", "min_padding", "running_sums", "max_depth", "num_self_layers", "depth_tokens",
               "processor_latents_train", "processor_latents_eval")


def validate(config, path: str = "config", may_be_zero=MAY_BE_ZERO) -> None:
    """Check each field of a config dataclass (and nested ones) against its annotation: ``int`` an
    integer >= 1 (>= 0 for the fields in ``MAY_BE_ZERO``), ``float`` a finite non-negative number,
    ``bool`` / ``str`` / ``tuple`` / ``dict`` those types, ``X | None`` either; a field named in
    ``PROBABILITIES`` is below 1. A ``ValueError`` names the field and the value."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        check_value(f"{path}.{field.name}", value, hints[field.name], 0 if field.name in may_be_zero else 1)
        if field.name in PROBABILITIES and isinstance(value, (int, float)) and not value < 1:
            raise ValueError(f"{path}.{field.name}: expected a probability in [0, 1), got {value!r}")


def check_value(path: str, value, hint, low: float = 0) -> None:
    """Check one ``value`` against its annotation ``hint`` as :func:`validate` does, integers
    against ``low``; a ``ValueError`` names ``path``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:  # a nested component config (input, queries, output, ...) is checked likewise
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            validate(value, path)
        return
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return check_value(path, value, option, low)
            except ValueError as error:
                errors.append(error)
        raise errors[0]
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, hint):
            raise ValueError(f"{path}: expected a {hint.__name__}, got {value!r}")
        return validate(value, path)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is bool:
        ok, expected = isinstance(value, bool), "true or false"
    elif hint is int:
        ok, expected = number and isinstance(value, int) and value >= low, f"an integer >= {low}"
    elif hint is float:
        ok, expected = number and math.isfinite(value) and value >= 0, "a finite number >= 0"
    elif hint is str:
        ok, expected = isinstance(value, str), "a string"
    elif hint is tuple or origin is tuple:
        if not isinstance(value, (tuple, list)):
            raise ValueError(f"{path}: expected a tuple, got {value!r}")
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if items and len(items) != len(value):
            raise ValueError(f"{path}: expected {len(items)} values, got {value!r}")
        for i, (item, item_hint) in enumerate(zip(value, items or (), strict=bool(items))):
            check_value(f"{path}[{i}]", item, item_hint, low)
        return
    elif hint is dict or origin is dict:
        ok, expected = isinstance(value, dict), "a dict"
    else:
        return
    if not ok:
        raise ValueError(f"{path}: expected {expected}, got {value!r}")


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
