"""Checking a job's settings when they are made, so that a bad value is refused before any data is
read or any file written, with a message that names it: ``train.lr: expected a number > 0, got
'abc'``.

``check_settings(config, "train", rules)`` checks every field of a settings dataclass against its
annotation (``perceiver.config.validate``: an ``int`` is an integer, a ``float`` a finite number,
``X | None`` either, ...), then against its rule, a predicate whose ``expected`` text goes into
the message. A field that is ``None`` (where its annotation allows it) skips its rule; a value of
the wrong type gets its rule's message.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing

from perceiver.config import validate


def rule(test, expected: str):
    """``test`` (a predicate) with the text that describes what it accepts."""
    test.expected = expected
    return test


def at_least(low: int):
    return rule(lambda v: v >= low, f"an integer >= {low}")


def between(low: float, high: float, low_open: bool = False, high_open: bool = False):
    def test(v):
        return (low < v if low_open else low <= v) and (v < high if high_open else v <= high)

    return rule(test, f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")


def one_of(*options):
    return rule(lambda v: v in options, f"one of {list(options)}")


positive = rule(lambda v: v > 0, "a number > 0")
at_least_zero = rule(lambda v: v >= 0, "a number >= 0")
probability = between(0, 1)


def _fits(value, hint) -> bool:
    """Whether ``value`` has the basic type of ``hint`` (``None`` aside): a rule is applied only
    then, and its message given otherwise."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    for option in options:
        base = typing.get_origin(option) or option
        if base is int and number and isinstance(value, int):
            return True
        if base is float and number and math.isfinite(value):
            return True
        if base is tuple and isinstance(value, (tuple, list)):  # JSON gives lists
            return True
        if base not in (int, float, tuple) and isinstance(value, base):
            return True
    return False


def check_settings(config, section: str, rules: dict) -> None:
    """Raise ``ValueError`` naming ``section.field`` for the first value of ``config`` that does not
    fit its rule in ``rules`` (``{field: predicate}``) or, for the other fields, its annotation."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value, rule = getattr(config, field.name), rules.get(field.name)
        if rule is not None and value is not None and not (_fits(value, hints[field.name]) and rule(value)):
            expected = getattr(rule, "expected", "a valid value")
            raise ValueError(f"{section}.{field.name}: expected {expected}, got {value!r}")
    validate(config, section, may_be_zero=[f.name for f in dataclasses.fields(config)])  # rules say more
