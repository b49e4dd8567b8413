"""Small helpers every method family uses."""

from __future__ import annotations

import zlib

import torch


def as_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Compute dtype: float32, or float64 when the caller asked for it; no copy when already there."""
    if tensor.dtype in (torch.float32, torch.float64):
        return tensor
    return tensor.float()


def default_generator(generator: torch.Generator | None) -> torch.Generator:
    """Random methods draw only from the caller's generator; without one, a fixed seed keeps results reproducible."""
    return generator if generator is not None else torch.Generator().manual_seed(0)


def tensor_generator(seed: int, name: str, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator a random method gets for one tensor, from (seed, tensor name): the engine and live merging
    draw the same numbers for the same recipe and seed."""
    return torch.Generator(device=device).manual_seed(zlib.crc32(f"{seed}:{name}".encode()))


class Workspace:
    """Scratch buffers shaped like one tensor, reused by every model of one merge call.

    On a CPU, allocating a fresh 64 MB tensor costs more than computing on it (the pages must be faulted in), so the
    big-tensor paths write into these buffers (`out=`) instead of allocating per operation.
    """

    def __init__(self, like: torch.Tensor):
        self.shape, self.device = like.shape, like.device
        self._buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, role: str, dtype: torch.dtype) -> torch.Tensor:
        key = (role, dtype)
        if key not in self._buffers:
            self._buffers[key] = torch.empty(self.shape, dtype=dtype, device=self.device)
        return self._buffers[key]
