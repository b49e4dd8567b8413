"""Turning errors into messages in the page. Handlers raise MergeLabError (or InferenceError) with a message that
says what to fix; `guarded` shows it as a gr.Error toast, or with `in_place` where the action was (the API client
gets the same text either way), never a traceback,
and in hosted mode without server paths. Anything unexpected is logged in full on the server and shown briefly."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from inference.errors import InferenceError
from merging.errors import MergeLabError
from ui.hosting import HostConfig

log = logging.getLogger("mergelab.ui")


# The errors whose message is meant for the user (they say what to fix); anything else is a bug.
USER_ERRORS: tuple[type[BaseException], ...] = (MergeLabError, InferenceError)


def user_message(error: BaseException, config: HostConfig) -> str:
    """What the page shows for `error`."""
    if isinstance(error, (USER_ERRORS, gr.Error)):
        text = error.message if isinstance(error, gr.Error) else str(error)
    else:
        text = (f"Something went wrong ({type(error).__name__}: {error}). The details are in the server log; "
                "try again, or change the models or settings.")
    return config.public_message(text)


# The last in-place error of each (session id, action), read once by the page's `.failure` listener. API clients
# get the same message as the raised gr.Error.
_IN_PLACE: dict[tuple[str, str], str] = {}


def _raise_for_page(error: BaseException, config: HostConfig, action: str, in_place: bool = False,
                    args: tuple = ()) -> None:
    if not isinstance(error, USER_ERRORS + (gr.Error,)):
        log.exception("%s failed", action)
    message = user_message(error, config)
    session_id = getattr(args[0], "id", None) if args else None
    if in_place and isinstance(session_id, str):
        _IN_PLACE[(session_id, action)] = message
    # In place: no toast (it would cover the page and vanish); the listener writes the message where the action was.
    raise gr.Error(message, print_exception=False, visible=not in_place) from None


def take_error(session: Any, action: str) -> str:
    """The message of `action`'s last in-place error in this session (once), for the page to show."""
    session_id = getattr(session, "id", None)
    return _IN_PLACE.pop((session_id, action), "") if isinstance(session_id, str) else ""


def in_place_error(action: str, render: Callable[[Any, str], Any] | None = None) -> Callable[[Any], Any]:
    """A `.failure` listener: `render(session, message)` (default: the message in bold) for the status line."""

    def show(session: Any) -> Any:
        message = take_error(session, action) or "That did not work; see the server log."
        return render(session, message) if render else error_markdown(message)

    return show


def guarded(config: HostConfig, action: str, *, in_place: bool = False) -> Callable[[Callable], Callable]:
    """Wrap a handler (plain or generator) so user errors become readable messages in the page. With `in_place`
    the first argument is the session and the page shows the message itself (see `in_place_error`)."""

    def wrap(fn: Callable) -> Callable:
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any):
                try:
                    yield from fn(*args, **kwargs)
                except Exception as error:  # noqa: BLE001 - every failure must become a message
                    _raise_for_page(error, config, action, in_place, args)

            return gen_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any):
            try:
                return fn(*args, **kwargs)
            except Exception as error:  # noqa: BLE001
                _raise_for_page(error, config, action, in_place, args)

        return wrapper

    return wrap


def error_markdown(message: str) -> str:
    return f"**⚠ {message}**"
