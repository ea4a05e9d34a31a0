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
import typing

from perceiver.config import check_value, validate


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


def _fits(path: str, value, hint) -> bool:
    """Whether ``value`` has the type of ``hint`` (integers of any sign): a rule is applied only
    then, and its message given otherwise."""
    try:
        check_value(path, value, hint, low=-math.inf)
    except ValueError:
        return False
    return True


def check_settings(config, section: str, rules: dict) -> None:
    """Raise ``ValueError`` naming ``section.field`` for the first value of ``config`` that does not
    fit its rule in ``rules`` (``{field: predicate}``) or, for the other fields, its annotation."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value, test = getattr(config, field.name), rules.get(field.name)
        if test is None or value is None:
            continue
        if not (_fits(field.name, value, hints[field.name]) and test(value)):
            expected = getattr(test, "expected", "a valid value")
            raise ValueError(f"{section}.{field.name}: expected {expected}, got {value!r}")
    validate(config, section, may_be_zero=[f.name for f in dataclasses.fields(config)])  # rules say more
