"""Cancellation that reaches inside a method's own loop.

The engine checks its cancel flag between tensors, but one tensor can take long (karcher's fixed-point iterations).
A caller that can be cancelled wraps the work in `with cancellable(flag):`; a long loop calls `check_cancelled()`
once per iteration, which raises MergeCancelled when the flag is set. The flag lives in a context variable, so it
is per thread (and per asyncio task): work started elsewhere never sees another caller's flag, and without a
`cancellable` block `check_cancelled()` does nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from merging.errors import MergeCancelled

CancelFlag = threading.Event | Callable[[], bool] | None
CANCELLED_MESSAGE = "Merge cancelled; no output folder was written."

_current: ContextVar[CancelFlag] = ContextVar("mergelab_cancel_flag", default=None)


def is_set(flag: CancelFlag) -> bool:
    """Whether `flag` (an Event, a callable returning True to cancel, or None) asks to stop."""
    if flag is None:
        return False
    if isinstance(flag, threading.Event):
        return flag.is_set()
    return bool(flag())


@contextmanager
def cancellable(flag: CancelFlag) -> Iterator[None]:
    """Make `flag` the one `check_cancelled()` reads in this thread while the block runs (nesting restores)."""
    token = _current.set(flag)
    try:
        yield
    finally:
        _current.reset(token)


def cancel_requested() -> bool:
    """Whether the innermost `cancellable` flag of this thread is set."""
    return is_set(_current.get())


def check_cancelled(message: str = CANCELLED_MESSAGE) -> None:
    """Raise MergeCancelled when this thread's cancellable flag is set; cheap enough to call once per iteration."""
    if is_set(_current.get()):
        raise MergeCancelled(message)
