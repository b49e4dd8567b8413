"""The session's current merge: one record made in one place (`record_merge`), read by every panel. Chat, Evaluate,
Interference, Export and the downloads use the record the controls produced last, never an earlier merge: the
record's `version` is new for every merge (across all sessions), a merged folder is read through a cache keyed by
its content (inference.cache.folder_identity), and results.json names the record's recipe."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from merging.recipe import Recipe

if TYPE_CHECKING:  # typing only: ui.workspace imports this module
    from ui.session import Session
    from ui.workspace import MergeSettings

Mode = Literal["live", "folder", "learned"]
_VERSIONS = itertools.count(1)
_VERSIONS_LOCK = threading.Lock()


def _next_version() -> int:
    with _VERSIONS_LOCK:
        return next(_VERSIONS)


@dataclass(frozen=True)
class MergeRecord:
    """One merge: what the controls said (`settings`), the recipe (models named by portable path or Hub id, as
    exported), where the weights are (`mode`: "live" and "learned" in the session's own models, "folder" in `folder`),
    the output dtype, a version unique in this process, when it was made and how long it took."""

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


def record_merge(session: Session, settings: MergeSettings, recipe: Recipe, mode: Mode, *, dtype: str,
                 seconds: float, folder: Path | None = None, learned: Any = None) -> MergeRecord:
    """Make the session's current merge. The only place a merge is recorded: the previous one's results (the last
    evaluation, which scored it) are dropped, so nothing downstream can mix the two."""
    record = MergeRecord(settings=settings, recipe=recipe, mode=mode, dtype=dtype, version=_next_version(),
                         created=time.time(), seconds=seconds, folder=folder, learned=learned)
    with session.lock:
        session.merge = record
        session.evaluation = None
        if learned is not None:
            session.learned = learned
    return record


def record_saved(session: Session, record: MergeRecord, folder: Path) -> None:
    """The current merge was also written to `folder` (Export): same merge, same version, now with a folder. A
    merge recorded meanwhile is left alone."""
    with session.lock:
        if session.merge is record:
            session.merge = replace(record, folder=folder)
