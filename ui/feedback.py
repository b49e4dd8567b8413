"""Turning errors into messages in the page. Handlers raise MergeLabError (or InferenceError) with a message that
says what to fix; `guarded` shows it as a gr.Error toast (the API client gets the same text), never a traceback,
and in hosted mode without server paths. Anything unexpected is logged in full on the server and shown briefly."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from merging.errors import MergeLabError
from ui.hosting import HostConfig

log = logging.getLogger("mergelab.ui")


def _user_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [MergeLabError]
    try:
        from inference.errors import InferenceError

        types.append(InferenceError)
    except ImportError:  # inference not importable: only our own errors count as the user's
        pass
    return tuple(types)


USER_ERRORS = _user_error_types()


def user_message(error: BaseException, config: HostConfig) -> str:
    """What the page shows for `error`."""
    if isinstance(error, (USER_ERRORS, gr.Error)):
        text = error.message if isinstance(error, gr.Error) else str(error)
    else:
        text = (f"Something went wrong ({type(error).__name__}: {error}). The details are in the server log; "
                "try again, or change the models or settings.")
    return config.public_message(text)


def _raise_for_page(error: BaseException, config: HostConfig, action: str) -> None:
    if not isinstance(error, USER_ERRORS + (gr.Error,)):
        log.exception("%s failed", action)
    raise gr.Error(user_message(error, config), print_exception=False) from None


def guarded(config: HostConfig, action: str) -> Callable[[Callable], Callable]:
    """Wrap a handler (plain or generator) so user errors become readable messages in the page."""

    def wrap(fn: Callable) -> Callable:
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen_wrapper(*args: Any, **kwargs: Any):
                try:
                    yield from fn(*args, **kwargs)
                except Exception as error:  # noqa: BLE001 - every failure must become a message
                    _raise_for_page(error, config, action)

            return gen_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any):
            try:
                return fn(*args, **kwargs)
            except Exception as error:  # noqa: BLE001
                _raise_for_page(error, config, action)

        return wrapper

    return wrap


def error_markdown(message: str) -> str:
    return f"**⚠ {message}**"
