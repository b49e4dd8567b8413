"""User-facing errors. Every message says what went wrong and what to do about it; the UI and the command line
show `str(error)` as is, so messages never need a traceback to be understood."""

from __future__ import annotations


class MergeLabError(Exception):
    """Base class: bad input or an impossible request, explained in plain words."""


class RecipeError(MergeLabError):
    """A recipe that cannot be used as written (unknown method or key, value out of range, ...)."""


class SourceError(MergeLabError):
    """A model that cannot be found or read (missing folder, Hub without network, pickle without opt-in, ...)."""


class CompatibilityError(MergeLabError):
    """Models that cannot be merged together (architecture, tensor names or shapes, vocabulary)."""


class MergeCancelled(MergeLabError):
    """The user cancelled a merge; nothing that looks like a finished model was left behind."""


class TaskSetError(MergeLabError):
    """A task file that cannot be used (bad JSON, missing field, empty set); names the line."""
