"""Merge methods: a registry of pure tensor functions, one module per family (loaded on first registry lookup)."""

from merging.methods.notes import collect_notes, note
from merging.methods.registry import Method, Param, get_method, list_methods, register

__all__ = ["Method", "Param", "collect_notes", "get_method", "list_methods", "note", "register"]
