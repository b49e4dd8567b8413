"""Streaming safetensors shard writer.

Every output tensor's name, shape and dtype is known before the merge starts, so the shard layout (which tensor goes
in which file, at which byte offset) is planned up front and each file's header is written first. Tensors are then
appended one at a time as they are merged: memory stays at one tensor, not one shard, and the files are standard
safetensors (`safe_open`, `from_pretrained` and mergekit read them).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch

from merging.dtypes import TORCH_TO_SAFETENSORS
from merging.errors import RecipeError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(size: str | int) -> int:
    """'2GB' -> 2_000_000_000, '500MiB' -> 524_288_000, 1024 -> 1024 (bytes)."""
    if isinstance(size, int):
        if size <= 0:
            raise RecipeError(f"Shard size must be positive, got {size}.")
        return size
    match = _SIZE.match(str(size))
    unit = match.group(2).upper() if match else None
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise RecipeError(f"Shard size {size!r} is not a size: write e.g. 2GB, 500MB or 1GiB.")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = self.dtype.itemsize
        for d in self.shape:
            n *= d
        return n


@dataclass
class Shard:
    filename: str
    tensors: list[PlannedTensor] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def plan_shards(tensors: list[PlannedTensor], max_shard_bytes: int) -> list[Shard]:
    """Greedy packing in merge order; a tensor larger than the limit gets a shard of its own (as in transformers)."""
    groups: list[list[PlannedTensor]] = [[]]
    size = 0
    for t in tensors:
        if groups[-1] and size + t.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(t)
        size += t.nbytes
    if len(groups) == 1:
        return [Shard(SINGLE_NAME, groups[0])]
    n = len(groups)
    return [Shard(f"model-{i + 1:05d}-of-{n:05d}.safetensors", g) for i, g in enumerate(groups)]


def _header_bytes(shard: Shard, metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for t in shard.tensors:
        header[t.name] = {"dtype": TORCH_TO_SAFETENSORS[t.dtype], "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    return len(raw).to_bytes(8, "little") + raw


class ShardWriter:
    """Writes planned shards into `folder`, tensor by tensor, strictly in plan order."""

    def __init__(self, folder: Path, shards: list[Shard], metadata: dict[str, str] | None = None) -> None:
        self.folder = Path(folder)
        self.shards = shards
        self.metadata = {"format": "pt", **(metadata or {})}
        self._order = [(si, t) for si, s in enumerate(shards) for t in s.tensors]
        self._next = 0
        self._file: BinaryIO | None = None
        self._file_index = -1

    def write(self, name: str, tensor: torch.Tensor) -> None:
        shard_index, planned = self._order[self._next]
        if name != planned.name or tuple(tensor.shape) != planned.shape or tensor.dtype != planned.dtype:
            raise RuntimeError(f"shard writer expected {planned} next, got {name} {tuple(tensor.shape)} {tensor.dtype}")
        if shard_index != self._file_index:
            self._open(shard_index)
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        assert self._file is not None
        with _naming(self.folder / self.shards[shard_index].filename):
            self._file.write(memoryview(data))
        self._next += 1

    def _open(self, shard_index: int) -> None:
        self.close()
        shard = self.shards[shard_index]
        with _naming(self.folder / shard.filename):
            self._file = open(self.folder / shard.filename, "wb")  # noqa: SIM115 - open across writes
            self._file.write(_header_bytes(shard, self.metadata))
        self._file_index = shard_index

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            with _naming(Path(file.name)):
                file.close()  # flushes: a full disk can show here

    def finish(self) -> list[str]:
        """Close the last file and write the index (sharded outputs only); returns the files written."""
        if self._next != len(self._order):
            raise RuntimeError(f"shard writer finished after {self._next} of {len(self._order)} tensors")
        self.close()
        names = [s.filename for s in self.shards]
        if len(self.shards) > 1:
            index = {"metadata": {"total_size": sum(s.nbytes for s in self.shards)},
                     "weight_map": {t.name: s.filename for s in self.shards for t in s.tensors}}
            with _naming(self.folder / INDEX_NAME):
                (self.folder / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
            names.append(INDEX_NAME)
        return names


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """OSErrors raised inside (a full disk has no file name) carry `path`, so the message can name the file."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise
