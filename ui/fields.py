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


def guard_inputs(demo: Any) -> None:
    """Every input component of the page answers a value it cannot take (null for a slider, a list for a textbox,
    a 100,000-character string for a radio) with a message naming its field, instead of gradio's generic error: its
    own preprocess runs first; a failure there becomes a gr.Error (shown even with show_error=False)."""
    import gradio as gr

    for block in list(demo.blocks.values()):
        if isinstance(block, gr.components.Component) and not getattr(block, "_guarded", False):
            block.preprocess = _guarded_preprocess(block.preprocess, _field_name(block))
            block._guarded = True


def _field_name(block: Any) -> str:
    name = getattr(block, "label", None) or getattr(block, "elem_id", None) or type(block).__name__
    return str(name)[:60]


def _guarded_preprocess(preprocess: Any, name: str) -> Any:
    import gradio as gr

    def checked(payload: Any) -> Any:
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except Exception:  # noqa: BLE001 - any failure to read a value is the sender's: say which field
            raise gr.Error(f"{name}: this field cannot take {_kind(payload)}; send the kind of value the page's "
                           "control sends.") from None

    return checked
