"""Numbers and choices from a request, checked before any work: finite, in range, of the right kind, with a
message naming the field (a gr.Number sent through the API can be null, NaN, 1e308 or a string)."""

from __future__ import annotations

import math
from typing import Any

from merging.errors import MergeLabError


def number_field(value: Any, name: str, low: float, high: float, *, integer: bool = False) -> float | int:
    """`value` as a number in [low, high] (a whole number when `integer`), or MergeLabError naming `name`."""
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MergeLabError(f"{name} must be {kind} between {low:g} and {high:g}, not {_kind(value)}.")
    if isinstance(value, float) and not math.isfinite(value):
        raise MergeLabError(f"{name} must be a finite number between {low:g} and {high:g}, not {value}.")
    if not low <= value <= high:
        shown = f"{value:g}" if abs(value) < 1e300 else "a huge number"
        raise MergeLabError(f"{name} must be between {low:g} and {high:g} (it is {shown}).")
    if integer:
        if value != int(value):
            raise MergeLabError(f"{name} must be a whole number, not {value:g}.")
        return int(value)
    return float(value)


def choice_field(value: Any, name: str, choices: tuple[str, ...]) -> str:
    """`value` when it is one of `choices`, else MergeLabError listing them (the value cut to 40 characters)."""
    if not isinstance(value, str) or value not in choices:
        shown = repr(value)[:40]
        raise MergeLabError(f"{name} must be one of {', '.join(choices)}, not {shown}.")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, str):
        return f"the text {value[:20]!r}"
    return type(value).__name__
