"""Errors of the evaluation package beyond merging.errors (all MergeLabError: printed without a traceback)."""

from __future__ import annotations

from merging.errors import MergeLabError


class SweepError(MergeLabError):
    """A sweep that cannot run as asked (an empty or malformed grid, an unknown metric, ...)."""
