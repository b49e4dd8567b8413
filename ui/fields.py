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


def _shape(value: Any) -> str:
    """What a value of the wrong shape was, without repeating it."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, list | tuple):
        return "a list in another shape"
    if isinstance(value, dict):
        return "an object in another shape"
    return "a number" if isinstance(value, int | float) and not isinstance(value, bool) else _kind(value)


def _kind(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, str):
        return f"the text {value[:20]!r}"
    return type(value).__name__


def guard_inputs(demo: Any) -> None:
    """Every input component of the page answers a value it cannot take (null for a slider, a list for a textbox,
    a 100,000-character string for a radio, a nested list for a chat history or a file) with a message naming its
    field and saying what to send, instead of gradio's generic error: its own preprocess runs first, and before it
    the check of its data model (a chat history's messages, a file's metadata); a failure in either becomes a
    gr.Error (shown even with show_error=False)."""
    import gradio as gr

    for block in list(demo.blocks.values()):
        if isinstance(block, gr.components.Component) and not getattr(block, "_guarded", False):
            name = _field_name(block)
            preprocess = _text_only(block.preprocess, name) if isinstance(block, gr.Textbox) else block.preprocess
            block.preprocess = _guarded_preprocess(preprocess, name)
            if getattr(block, "data_model", None) is not None:
                block.data_model = checked_data_model(block.data_model, name)
            block._guarded = True


# What to send, by the gradio data model a component checks a request's value against (before its preprocess).
DATA_MODEL_HINTS = {
    "ChatbotDataMessages": ('the conversation as a list of messages, each {"role": "user" or "assistant", '
                            '"content": [{"type": "text", "text": "..."}]} (as /chat returns them), or [] to start one'),
    "FileData": 'a file (in Python: gradio_client.handle_file("path/to/file")), or null for none',
    "ListFiles": 'a list of files (in Python: [gradio_client.handle_file("path/to/file"), ...]), or null for none',
}


def checked_data_model(model: type, name: str) -> type:
    """A stand-in for a component's gradio data model (same name, fields and schema, so the API description is
    unchanged) whose model_validate turns a value of the wrong shape into a gr.Error naming the field `name` and
    saying what to send (DATA_MODEL_HINTS), never repeating the value. gradio checks a request's value against the
    component's data model before its preprocess, where guard_inputs' other wrapper cannot see the failure."""
    import gradio as gr
    from pydantic import ValidationError

    hint = DATA_MODEL_HINTS.get(model.__name__, "the kind of value the page's control sends (see \"Use via API\")")

    def model_validate(cls: type, obj: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return model.model_validate(obj, *args, **kwargs)
        except ValidationError:
            raise gr.Error(f"{name}: send {hint}, not {_shape(obj)}.") from None

    return type(model.__name__, (model,), {"__module__": model.__module__, "__doc__": model.__doc__,
                                          "model_validate": classmethod(model_validate)})


def _field_name(block: Any) -> str:
    name = getattr(block, "label", None) or getattr(block, "elem_id", None) or type(block).__name__
    return str(name)[:60]


def _text_only(preprocess: Any, name: str) -> Any:
    """A textbox's preprocess that refuses a list or an object (gradio's own would turn it into its Python text,
    e.g. a chat message "[['hi']]", and carry on)."""
    import gradio as gr

    def checked(payload: Any) -> Any:
        if isinstance(payload, list | tuple | dict):
            raise gr.Error(f"{name}: send text, not {_shape(payload)}.")
        return preprocess(payload)

    return checked


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
