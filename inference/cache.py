"""A bounded, thread-safe cache of loaded models, evicting the least recently used by parameter bytes. Folders are
keyed by their path and their content identity (`folder_identity`), so a folder rewritten in place (a re-merge to
the same name) is loaded anew instead of answering with the model it held before."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path

import torch

from inference.loading import LoadedModel, Quantization, load_model, parameter_bytes


def folder_identity(path: str | Path) -> tuple[tuple[str, int, int, int], ...]:
    """What changes when a model folder is rewritten: (name, size, mtime_ns, inode) of its top-level files. The
    engine builds a merge in a new folder and renames it into place, so every rewrite has new inodes and times."""
    folder = Path(path)
    entries = []
    with os.scandir(folder) as listing:
        for entry in listing:
            if entry.is_file():
                info = entry.stat()
                entries.append((entry.name, info.st_size, info.st_mtime_ns, info.st_ino))
    return tuple(sorted(entries))


class ModelCache:
    """Keeps loaded models under `max_bytes` of parameters. A model larger than the whole budget is still returned
    (and kept alone), since the caller needs it now. Loads of the same key by concurrent threads happen once."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, tuple[LoadedModel, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._key_locks: dict[Hashable, threading.Lock] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(size for _, size in self._entries.values())

    def keys(self) -> list[Hashable]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._entries)

    def get(self, key: Hashable) -> LoadedModel | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: Hashable, loaded: LoadedModel, nbytes: int | None = None) -> None:
        size = parameter_bytes(loaded.model) if nbytes is None else nbytes
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = (loaded, size)
            evicted = self._evict_locked()
        if evicted and torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand the evicted models' GPU memory back to the driver

    def get_or_load(self, key: Hashable, loader: Callable[[], LoadedModel]) -> LoadedModel:
        """The cached model for `key`, or `loader()`'s result, cached."""
        found = self.get(key)
        if found is not None:
            return found
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # one load per key; other keys load in parallel
            found = self.get(key)
            if found is None:
                found = loader()
                self.put(key, found)
        with self._lock:
            self._key_locks.pop(key, None)
        return found

    def load(
        self,
        path: str | Path,
        *,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
        quantization: Quantization | None = None,
    ) -> LoadedModel:
        """`load_model` through the cache; the key is (resolved path, its folder_identity, device, dtype,
        quantization). Entries for an earlier content of the same folder are dropped: nobody can ask for them."""
        resolved = str(Path(path).resolve())
        key = (resolved, folder_identity(resolved), device, str(dtype), quantization)
        with self._lock:
            stale = [k for k in self._entries
                     if isinstance(k, tuple) and len(k) == 5 and k[0] == resolved and k[1] != key[1]]
            for old in stale:
                del self._entries[old]
        return self.get_or_load(key, lambda: load_model(path, device=device, dtype=dtype, quantization=quantization))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def _evict_locked(self) -> int:
        """Drop least recently used entries until under budget; returns how many went."""
        # The newest entry is last and is never evicted (len > 1), so an oversized model stays alone.
        total = sum(size for _, size in self._entries.values())
        evicted = 0
        while total > self.max_bytes and len(self._entries) > 1:
            oldest = next(iter(self._entries))
            total -= self._entries.pop(oldest)[1]
            evicted += 1
        return evicted
