"""Errors of the inference package (all MergeLabError, so the CLI and UI print them without a traceback)."""

from __future__ import annotations

from merging.errors import MergeLabError, SourceError


class InferenceError(MergeLabError):
    """A model that cannot be loaded or run as asked (quantization on an unsupported host, unknown dtype, ...)."""


__all__ = ["InferenceError", "SourceError"]
