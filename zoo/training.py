"""Shared training pieces: the warm-up + decay schedule and the deterministic setup every run goes through."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


def warmup_cosine(step: int, total: int, warmup_fraction: float = 0.1, floor: float = 0.05) -> float:
    """LR multiplier: linear warm-up, then cosine decay to `floor`. A constant rate destabilised the tiny LM."""
    warmup = max(1, int(total * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch and run single-threaded, so the same seed gives bit-identical weights on any machine load."""
    threads = torch.get_num_threads()
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_loop(
    model: torch.nn.Module,
    steps: int,
    make_batch: Callable[[random.Random], dict[str, torch.Tensor]],
    loss_fn: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor],
    *,
    lr: float,
    seed: int,
    weight_decay: float = 0.0,
    weight_noise: float = 0.0,
    on_step: Callable[[int, float], None] | None = None,
) -> None:
    """AdamW with the warm-up + decay schedule over `steps` batches drawn from a seeded data RNG. With
    `weight_noise` > 0 each step's gradient is taken at randomly perturbed weights (Gaussian, per tensor
    `weight_noise` times the tensor's own standard deviation) and applied to the unperturbed ones: a fine-tune that
    keeps working when another task vector is added (docs/zoo.md, design E10)."""
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps))
    model.train()
    for step in range(steps):
        saved = _perturb(model, weight_noise) if weight_noise else []
        loss = loss_fn(model, make_batch(rng))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        _restore(model, saved)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if on_step:
            on_step(step, loss.item())
    model.eval()


@torch.no_grad()
def _perturb(model: torch.nn.Module, scale: float) -> list[torch.Tensor]:
    """Adds Gaussian noise (per tensor: `scale` times the tensor's standard deviation) to every parameter and
    returns the unperturbed values for `_restore` (a copy: subtracting the noise again would not round-trip
    exactly). Drawn from torch's seeded RNG, so a seeded run is repeatable."""
    saved = []
    for parameter in model.parameters():
        saved.append(parameter.detach().clone())
        spread = parameter.std() if parameter.numel() > 1 else parameter.abs().mean()
        parameter.add_(torch.randn_like(parameter) * (scale * spread))
    return saved


@torch.no_grad()
def _restore(model: torch.nn.Module, saved: list[torch.Tensor]) -> None:
    for parameter, value in zip(model.parameters(), saved):
        parameter.copy_(value)
