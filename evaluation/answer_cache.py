"""The experts' generated answers, kept so they are computed once per (expert, task set, generation settings).

An expert loaded from a folder is identified by the folder's path and the size and modification time of each file in
it (weights, config, tokenizer): rewriting the folder makes a new identity, so stale answers are never read. With it
go the model's dtype and device type and GENERATION_VERSION (bumped when greedy decoding changes). Each answer is keyed
by what generation sees: the prompt as the model reads it (chat template applied), its token limit and stop strings.
A smaller or larger task set reuses what it shares with an earlier one.

Answers live in memory (shared by every Evaluator of the process) and, with a directory, in one JSON file per expert
identity, written atomically, so a re-evaluation or a sweep in a new process generates only with the merged model.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

from inference.loading import LoadedModel

GENERATION_VERSION = 1  # bump when generation's output for the same inputs changes
ENV_DIRECTORY = "MERGELAB_ANSWER_CACHE"


def default_directory() -> Path:
    """$MERGELAB_ANSWER_CACHE, else ~/.cache/mergelab/expert-answers."""
    configured = os.environ.get(ENV_DIRECTORY)
    return Path(configured) if configured else Path.home() / ".cache" / "mergelab" / "expert-answers"


def folder_identity(folder: str | Path) -> str:
    """A digest of a model folder's resolved path and each file's name, size and modification time."""
    root = Path(folder).resolve()
    entries = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in root.iterdir() if p.is_file())
    return _digest([str(root), entries])


@torch.no_grad()
def weights_fingerprint(model: torch.nn.Module, tensors: int = 4) -> list[float]:
    """Sums over a strided sample of a few parameters: a model changed in memory after loading (its folder
    unchanged) gets another key. Costs milliseconds, not a pass over the weights."""
    parameters = list(model.parameters())
    picks = {round(i * (len(parameters) - 1) / max(tensors - 1, 1)) for i in range(tensors)}
    return [round(float(parameters[i].detach().flatten()[::997].double().sum()), 6) for i in sorted(picks)]


def _digest(value: object) -> str:
    return hashlib.sha256(json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def answer_key(prompt_text: str, limit: int, stop: Sequence[str]) -> str:
    """The key of one answer: the templated prompt, its token limit and its stop strings."""
    return _digest([prompt_text, int(limit), list(stop)])


class AnswerCache:
    """Answers by model identity; `directory=None` keeps them in memory only."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def model_key(self, loaded: LoadedModel) -> str | None:
        """The identity of a loaded model, or None where it has no folder (nothing to key it by)."""
        if loaded.path is None or not Path(loaded.path).is_dir():
            return None
        parameter = next(loaded.model.parameters())
        return _digest([folder_identity(loaded.path), weights_fingerprint(loaded.model), str(parameter.dtype),
                        parameter.device.type, GENERATION_VERSION])

    def lookup(self, model_key: str, keys: Sequence[str]) -> dict[str, str]:
        """The known answers among `keys`."""
        known = self._entries(model_key)
        return {k: known[k] for k in keys if k in known}

    def store(self, model_key: str, answers: dict[str, str]) -> None:
        """Remember `answers` (key -> raw text) and write the model's file when there is a directory."""
        if not answers:
            return
        with self._lock:
            entries = self._entries(model_key)
            entries.update(answers)
            if self.directory is not None:
                self._write(self.directory / f"{model_key}.json", entries)

    def _entries(self, model_key: str) -> dict[str, str]:
        if model_key not in self._memory:
            self._memory[model_key] = self._read(model_key)
        return self._memory[model_key]

    def _read(self, model_key: str) -> dict[str, str]:
        if self.directory is None:
            return {}
        file = self.directory / f"{model_key}.json"
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # missing or damaged: the answers are generated again
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    @staticmethod
    def _write(file: Path, entries: dict[str, str]) -> None:
        temporary = None
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=file.parent, prefix=".answers-", suffix=".tmp")
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(entries, out, ensure_ascii=False)
            os.replace(temporary, file)
        except OSError:  # a cache that cannot be written only costs time: the answers stay in memory
            if temporary is not None:
                Path(temporary).unlink(missing_ok=True)


_SHARED = AnswerCache()


def shared_memory_cache() -> AnswerCache:
    """The process-wide in-memory cache (the default of every Evaluator)."""
    return _SHARED
