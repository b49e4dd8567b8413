"""Per-browser-session state. Each browser tab (and each gradio_client Client) gets its own Session through
gr.State; nothing in it is shared with other users. The only thing shared across sessions is the read-only model
cache in ui.resources."""

from __future__ import annotations

import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class SourceModel:
    """One model the user picked: what they typed or chose (`ref`), a short label, and its local folder."""

    ref: str
    label: str
    path: Path
    origin: str = "local"  # "zoo", "local" or "hub"


@dataclass
class Session:
    """Everything one user has picked, merged and measured. Mutated in place by the handlers."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    family: str | None = None  # zoo family name when the models come from the zoo
    kind: str = "lm"  # "lm" or "classifier"
    base: SourceModel | None = None
    sources: list[SourceModel] = field(default_factory=list)
    tasks_path: Path | None = None  # the family's task set (JSONL)
    unlabeled_path: Path | None = None
    preflight: Any = None
    live: Any = None  # merging.live.LiveMerger when the models are small enough to merge in memory
    recipe: Any = None  # the last merged Recipe (models named by portable path or Hub id)
    merge_settings: Any = None  # the ui.workspace.MergeSettings that produced it
    merged_tensors: dict | None = None
    merged_path: Path | None = None  # folder written by "Merge to folder"
    chat_model: Any = None  # this session's own model instance holding the merged weights
    classifier_models: dict[str, Any] = field(default_factory=dict)  # task -> merged encoder with task t's head
    merge_version: int = 0  # bumped by every merge; models loaded for an older version are stale
    loaded_version: int = -1
    last_merge_ms: float | None = None
    evaluation: Any = None  # last evaluation result (for downloads)
    sweep: Any = None
    learned: Any = None
    evaluators: dict[tuple, Any] = field(default_factory=dict, repr=False)  # experts' answers, computed once
    tokenizers: dict[str, Any] = field(default_factory=dict, repr=False)  # folder -> this session's tokenizer
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)  # set to stop a merge or training
    stop_chat: threading.Event = field(default_factory=threading.Event, repr=False)

    def __deepcopy__(self, memo: dict) -> Session:
        # gr.State deep-copies the value its factory returns; a Session is created per browser session and holds
        # locks and models, so the "copy" is the session itself.
        return self

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.sources]

    def source_by_label(self, label: str) -> SourceModel | None:
        return next((s for s in [self.base, *self.sources] if s is not None and s.label == label), None)

    def merged_folder(self, models_dir: Path, name: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip(".-") or "merged"
        return models_dir / "merged" / self.id / safe

    def reset_models(self) -> None:
        """Forget everything derived from the previous choice of models."""
        self.preflight = None
        self.live = None
        self.recipe = None
        self.merge_settings = None
        self.merged_tensors = None
        self.merged_path = None
        self.chat_model = None
        self.classifier_models = {}
        self.evaluation = None
        self.evaluators = {}
        self.sweep = None
        self.learned = None
        self.merge_version += 1


def new_session() -> Session:
    return Session()


class FreshSession:
    """The initial value of the page's gr.State. Gradio deep-copies a State's initial value once per browser session;
    copying this gives a new Session. (A callable initial value would be run by a page-load event of its own, racing
    the app's load event and replacing the session that event had just filled.)"""

    def __deepcopy__(self, memo: dict) -> Session:
        return new_session()


def close_session(session: Session | None, models_dir: Path | None = None) -> None:
    """Free a finished session's models; in hosted mode also its merged folders (disk is shared)."""
    if session is None:
        return
    session.reset_models()
    if models_dir is not None:
        shutil.rmtree(models_dir / "merged" / session.id, ignore_errors=True)
