"""zoo.training.train_loop's weight noise: gradients taken at perturbed weights, applied to the unperturbed ones,
repeatable under a seed (the zoo's builds must reproduce their checkpoints byte for byte)."""

from __future__ import annotations

import random

import torch

from zoo.training import deterministic, train_loop


def _batch(rng: random.Random) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    inputs = torch.randn(8, 4, generator=generator)
    return {"x": inputs, "y": inputs.sum(dim=1, keepdim=True)}


def _loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])


def _trained(lr: float, weight_noise: float, seed: int = 3) -> torch.Tensor:
    with deterministic(seed):
        model = torch.nn.Linear(4, 1)
        train_loop(model, 5, _batch, _loss, lr=lr, seed=seed, weight_noise=weight_noise)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_weight_noise_leaves_the_weights_where_the_optimiser_puts_them():
    """At rate 0 nothing moves: the noise is taken away again exactly after each backward pass."""
    assert torch.equal(_trained(lr=0.0, weight_noise=0.5), _trained(lr=0.0, weight_noise=0.0))


def test_weight_noise_changes_the_steps_and_repeats_under_a_seed():
    noisy = _trained(lr=0.05, weight_noise=0.5)
    assert torch.equal(noisy, _trained(lr=0.05, weight_noise=0.5))
    assert not torch.equal(noisy, _trained(lr=0.05, weight_noise=0.0))
