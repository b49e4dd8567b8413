"""The session's current merge: the record of one merge (`MergeRecord`: the controls' `merging.settings.
MergeSettings`, the recipe, where the weights are), made in one place (`ui.session.Session.record_merge`) and read by every panel. Chat, Evaluate,
Interference, Export and the downloads use the record the controls produced last, never an earlier merge: the
record's `version` is new for every merge (across all sessions), a merged folder is read through a cache keyed by
its content (inference.cache.folder_identity), and results.json names the record's recipe."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from merging.recipe import Recipe
from merging.settings import MergeSettings

Mode = Literal["live", "folder", "learned"]


@dataclass(frozen=True)
class MergeRecord:
    """One merge: what the controls said (`settings`), the recipe as merged (models named by session label; export
    and reports rename them: ui.workspace.recorded_recipe), where the weights are (`mode`: "live" and "learned" in
    the session's own models, "folder" in `folder`), the output dtype, a version unique in this process, when it
    was made and how long it took."""

    settings: MergeSettings
    recipe: Recipe
    mode: Mode
    dtype: str
    version: int
    created: float
    seconds: float
    folder: Path | None = None
    learned: Any = None  # merging.learned.LearnedMerge for mode "learned"

    @property
    def in_memory(self) -> bool:
        """True when the session's own models hold the weights (chat and scoring read them there)."""
        return self.mode in ("live", "learned")

    def describe(self) -> str:
        """One line for reports and results: method, where, version."""
        where = {"live": "in memory", "learned": "learned, in memory", "folder": f"folder {self.folder}"}[self.mode]
        return f"{self.recipe.merge_method} ({where}, {self.dtype}, merge #{self.version})"
