"""Small helpers every method family uses."""

from __future__ import annotations

import torch


def as_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Compute dtype: float32, or float64 when the caller asked for it; no copy when already there."""
    if tensor.dtype in (torch.float32, torch.float64):
        return tensor
    return tensor.float()


def default_generator(generator: torch.Generator | None) -> torch.Generator:
    """Random methods draw only from the caller's generator; without one, a fixed seed keeps results reproducible."""
    return generator if generator is not None else torch.Generator().manual_seed(0)
