"""Per-browser-session state. Each browser tab (and each gradio_client Client) gets its own Session through
gr.State; nothing in it is shared with other users. The only thing shared across sessions is the read-only model
cache in ui.resources."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from merging.settings import MergeSettings
from ui.merge_record import MergeRecord, Mode

if TYPE_CHECKING:  # typing only: heavy imports
    from evaluation.agreement import EvalResult
    from evaluation.sweep import SweepResult
    from inference import LoadedModel
    from merging.learned import LearnedMerge
    from merging.live import LiveMerger, LivePlan
    from merging.preflight import PreflightReport
    from merging.recipe import Recipe

# Where a session made outside a page (tests, benches, scripts) keeps its downloads; a page's sessions use its
# HostConfig.downloads_dir (inside the app's models folder), given to FreshSession. <root>/<session id>/<what>/.
DOWNLOADS = Path(tempfile.gettempdir()) / "mergelab-downloads"
# At most this many sessions' download folders are kept under a root; the least recently used go first. gradio copies
# a returned file into its own cache as the event ends, so removing an idle session's folder loses nothing it shows.
MAX_DOWNLOAD_SESSIONS = 32
# Merge versions, unique in this process across all sessions (a record's `version`; Session.record_merge draws them).
_VERSIONS = itertools.count(1)
_VERSIONS_LOCK = threading.Lock()


@dataclass
class SourceModel:
    """One model the user picked: what they typed or chose (`ref`), a short label, and its local folder."""

    ref: str
    label: str
    path: Path
    origin: str = "local"  # "zoo", "local" or "hub"


@dataclass
class Session:
    """Everything one user has picked, merged and measured. The current merge is one record (`merge`, made only by
    `record_merge`); the panels read it."""

    # 122 random bits (uuid4): the id names the session's downloads folder, which gradio serves to whoever knows the
    # path, so it must not be guessable.
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    downloads_root: Path = DOWNLOADS  # this session's downloads go to downloads_root/<id>/ (session_downloads)
    # --- the chosen models (ui.workspace.select_models)
    family: str | None = None  # zoo family name when the models come from the zoo
    kind: str = "lm"  # "lm" or "classifier"
    base: SourceModel | None = None
    sources: list[SourceModel] = field(default_factory=list)
    dtype: str = "float32"  # the sources' dtype: merges are written in it unless the recipe says otherwise
    tasks_path: Path | None = None  # the family's task set (JSONL)
    unlabeled_path: Path | None = None
    preflight: PreflightReport | None = None
    live: LiveMerger | None = None  # set when the live memory plan says the sources fit (ui.workspace.prepare_live)
    live_plan: LivePlan | None = None  # why live merging is on or off
    start_settings: MergeSettings | None = None  # the controls' first values (a preset's), until the first merge
    # --- the current merge and the session's own models holding in-memory merges
    merge: MergeRecord | None = None
    chat_model: LoadedModel | None = None  # this session's language model; live merges are written into it
    classifier_models: dict[str, LoadedModel] = field(default_factory=dict)  # task -> merged encoder + t's head
    # --- results
    evaluation: EvalResult | None = None  # the last evaluation, of `merge` (dropped when a new merge is recorded)
    sweep: SweepResult | None = None
    learned: LearnedMerge | None = None
    evaluators: dict[tuple, object] = field(default_factory=dict, repr=False)  # experts' answers, computed once
    tokenizers: dict[str, object] = field(default_factory=dict, repr=False)  # folder -> this session's tokenizer
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)  # set to stop a merge or training
    stop_chat: threading.Event = field(default_factory=threading.Event, repr=False)
    newest_move: float = 0.0  # the browser stamp of the newest Merge control move merged (ui.workspace.newest_move)
    # No __deepcopy__: Gradio 6 deep-copies only a gr.State's initial value (gradio/state_holder.py), which is a
    # FreshSession (below); a Session itself is never copied.

    @property
    def recipe(self) -> Recipe | None:
        """The current merge's recipe, models named by session label (ui.workspace.recorded_recipe names them
        for export and reports)."""
        return self.merge.recipe if self.merge is not None else None

    @property
    def merge_settings(self) -> MergeSettings | None:
        """What the controls show: the current merge's settings, else the preset's starting values."""
        return self.merge.settings if self.merge is not None else self.start_settings

    @merge_settings.setter
    def merge_settings(self, settings: MergeSettings | None) -> None:
        self.start_settings = settings

    @property
    def merged_path(self) -> Path | None:
        """The current merge's folder (a folder merge), else None."""
        return self.merge.folder if self.merge is not None else None

    @property
    def labels(self) -> list[str]:
        return [s.label for s in self.sources]

    def source_by_label(self, label: str) -> SourceModel | None:
        return next((s for s in [self.base, *self.sources] if s is not None and s.label == label), None)

    def merged_folder(self, models_dir: Path, name: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip(".-") or "merged"
        return models_dir / "merged" / self.id / safe

    def record_merge(self, settings: MergeSettings, recipe: Recipe, mode: Mode, *, dtype: str, seconds: float,
                     folder: Path | None = None, learned: LearnedMerge | None = None) -> MergeRecord:
        """Make this session's current merge. The only place a merge is recorded: the previous one's results (the
        last evaluation, which scored it) are dropped, so nothing downstream can mix the two."""
        with _VERSIONS_LOCK:
            version = next(_VERSIONS)
        record = MergeRecord(settings=settings, recipe=recipe, mode=mode, dtype=dtype, version=version,
                             created=time.time(), seconds=seconds, folder=folder, learned=learned)
        with self.lock:
            self.merge = record
            self.evaluation = None
            if learned is not None:
                self.learned = learned
        return record

    def record_saved(self, record: MergeRecord, folder: Path) -> None:
        """The current merge was also written to `folder` (Export): same merge, same version, now with a folder. A
        merge recorded meanwhile is left alone."""
        with self.lock:
            if self.merge is record:
                self.merge = replace(record, folder=folder)

    def reset_models(self) -> None:
        """Forget everything derived from the previous choice of models."""
        with self.lock:
            self.preflight = None
            self.live = None
            self.live_plan = None
            self.start_settings = None
            self.merge = None
            self.chat_model = None
            self.classifier_models = {}
            self.evaluation = None
            self.evaluators = {}
            self.tokenizers = {}
            self.sweep = None
            self.learned = None


def new_session(downloads_root: Path = DOWNLOADS) -> Session:
    return Session(downloads_root=downloads_root)


class FreshSession:
    """The initial value of the page's gr.State. Gradio deep-copies a State's initial value once per browser session;
    copying this gives a new Session, whose downloads go under `downloads_root` (the page's
    HostConfig.downloads_dir). (A callable initial value would be run by a page-load event of its own, racing the
    app's load event and replacing the session that event had just filled.)"""

    def __init__(self, downloads_root: Path = DOWNLOADS) -> None:
        self.downloads_root = downloads_root

    def __deepcopy__(self, memo: dict) -> Session:
        return new_session(self.downloads_root)


def session_downloads(session: Session, what: str) -> Path:
    """The session's own folder for a kind of download (`what`: "recipe", ...), made on first use and reused by
    every later call (a file in it is replaced, not added), removed with the session (close_session). Sessions
    that are never closed (an API client that just stops, a killed server) are bounded too: a session making its
    folder leaves at most MAX_DOWNLOAD_SESSIONS under the root (prune_downloads)."""
    own = session.downloads_root / session.id
    if not own.is_dir():
        prune_downloads(session.downloads_root, keep=MAX_DOWNLOAD_SESSIONS - 1)
    folder = own / what
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()  # the fine clock (a folder's own time is coarse): the order of use is kept
    os.utime(own, (now, now))  # used now: the newest, so the last a later prune removes
    return folder


def prune_downloads(root: Path, keep: int) -> list[Path]:
    """Remove all but the `keep` most recently used session folders under `root` (by modification time); returns
    those removed. Anything that is not a plain folder is left alone."""
    try:
        folders = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:  # no root yet
        return []
    folders.sort(key=_mtime, reverse=True)
    removed = folders[max(keep, 0):]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile (another session's prune)
        return 0.0


def close_session(session: Session | None, models_dir: Path | None = None) -> None:
    """Free a finished session's models and downloads; in hosted mode also its merged folders (disk is shared)."""
    if session is None:
        return
    session.reset_models()
    shutil.rmtree(session.downloads_root / session.id, ignore_errors=True)
    if models_dir is not None:
        shutil.rmtree(models_dir / "merged" / session.id, ignore_errors=True)
