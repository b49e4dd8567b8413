"""A model folder's tensors as a read-only mapping that reads each tensor only when asked for (bounded memory for big
models): what interference reports and other passes over a checkpoint's tensors read, from the CLI and the UI."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import torch

from merging.sources import open_model


class LazyFolderState(Mapping):
    """`LazyFolderState(ref)[name]` reads one tensor of the model `ref` (a folder, or what open_model accepts)."""

    def __init__(self, ref: str | Path) -> None:
        self.source = open_model(str(ref))
        self._names = self.source.tensor_names()
        self._known = set(self._names)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._known:
            raise KeyError(name)
        return self.source.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)
