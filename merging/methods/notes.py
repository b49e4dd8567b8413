"""Per-tensor notes: what a method wants the user to know about the tensor it merges (SCE falling back to uniform
coefficients, say). A method calls `note(...)`; the caller that wants a call's notes makes the call through
`collected(fn, *args)` (the per-tensor step, merging/step.py) or wraps it in `with collect_notes() as notes:`.
Notes are per thread (a context variable), so an engine that merges tensors in several threads collects each
tensor's notes separately, and `note` costs nothing when nobody collects.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

_notes: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("merge_notes", default=None)
T = TypeVar("T")


def note(message: str) -> None:
    """Record something the user should know about the tensor being merged; free when nobody collects."""
    notes = _notes.get()
    if notes is not None:
        notes.append(message)


@contextlib.contextmanager
def collect_notes() -> Iterator[list[str]]:
    """`with collect_notes() as notes: method.fn(...)` — `notes` then holds that call's messages."""
    notes: list[str] = []
    token = _notes.set(notes)
    try:
        yield notes
    finally:
        _notes.reset(token)


def collected(fn: Callable[..., T], *args: Any) -> tuple[T, list[str]]:
    """(fn(*args), the notes it made): the per-tensor step calls a method this way."""
    with collect_notes() as notes:
        return fn(*args), notes
