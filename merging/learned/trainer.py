"""The optimisation loop shared by AdaMerging and SAMerging: Adam on λ, optionally wrapped in SAM.

The loop knows nothing about models: it takes the model's parameters for the merged tensors (which it overwrites
with θ(λ)) and a loss function `loss_fn(task, batch) -> scalar` that runs the model on task t's cached batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch

from merging.errors import MergeCancelled, MergeLabError
from merging.learned.coefficients import Granularity, TaskVectors
from merging.learned.sam import sam_perturbation

LossFn = Callable[[int, int], torch.Tensor]
SamMode = Literal["true", "repo"]


@dataclass
class OptimConfig:
    """Optimiser settings. `rho` = 0 is plain Adam. `sam_mode="true"` takes the second gradient at θ(λ+ε);
    `"repo"` reproduces the public SAMerging code, which perturbs λ but keeps the cached θ(λ), so its second gradient
    equals the first and the update is plain Adam's, at twice the cost."""

    steps: int = 100
    lr: float = 1e-3
    weight_decay: float = 0.0
    rho: float = 0.0
    sam_mode: SamMode = "true"
    adaptive: bool = True
    asam_eta: float = 0.01
    granularity: Granularity = "layer"
    init: float = 0.3

    def check(self) -> None:
        if self.steps < 1:
            raise MergeLabError(f"steps must be at least 1, not {self.steps}")
        if self.rho < 0:
            raise MergeLabError(f"the SAM radius rho must be ≥ 0 (0 = plain Adam), not {self.rho}")
        if self.sam_mode not in ("true", "repo"):
            raise MergeLabError(f"sam_mode must be 'true' or 'repo', not {self.sam_mode!r}")
        if self.granularity not in ("layer", "task"):
            raise MergeLabError(f"granularity must be 'layer' or 'task', not {self.granularity!r}")
        if self.lr <= 0:
            raise MergeLabError(f"the learning rate must be positive, not {self.lr}")


@dataclass
class LearnResult:
    coefficients: torch.Tensor  # (T, P) layer-wise or (T,) task-wise, on the CPU
    losses: list[float] = field(default_factory=list)  # loss at λ before each update
    seconds: float = 0.0


def learn(
    vectors: TaskVectors,
    params: Mapping[str, torch.Tensor],
    loss_fn: LossFn,
    num_batches: int,
    config: OptimConfig,
    *,
    progress: Callable[[int, float], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> LearnResult:
    """Learn λ by minimising Σ_t loss_fn(t, batch) with Adam (and SAM when rho > 0), replaying the cached batches in
    order: step i uses batch i mod num_batches of every task. `params[name]` are the model's leaf tensors for the
    merged names (requires_grad=True); they hold θ(λ_final) when this returns. Raises MergeCancelled when `cancel()`
    turns true between steps."""
    config.check()
    if num_batches < 1:
        raise MergeLabError("learned merging needs at least one batch of examples per task")
    missing = [n for n in vectors.names if n not in params]
    if missing:
        raise MergeLabError(f"the model has no parameter for merged tensors {missing[:3]}…: wrong architecture?")

    lam = vectors.init_coefficients(config.init, config.granularity).requires_grad_(True)
    optimizer = torch.optim.Adam([lam], lr=config.lr, weight_decay=config.weight_decay)
    targets = [params[n] for n in vectors.names]

    def loss_and_grad(coefficients: torch.Tensor | None, batch: int) -> tuple[float, torch.Tensor]:
        """Loss and ∂L/∂λ at θ(coefficients); None reuses whatever θ the model holds (the research code's cache)."""
        if coefficients is not None:
            vectors.materialize(coefficients, params)
        for p in targets:
            p.grad = None
        total = 0.0
        for task in range(vectors.num_tasks):  # one backward per task bounds activation memory
            loss = loss_fn(task, batch)
            loss.backward()
            total += float(loss.detach())
        grads = {n: p.grad for n, p in zip(vectors.names, targets)}
        return total, vectors.coefficient_grad(grads, config.granularity)

    start = time.perf_counter()
    losses: list[float] = []
    for step in range(config.steps):
        if cancel is not None and cancel():
            raise MergeCancelled(f"learning cancelled after {step} of {config.steps} steps; nothing was saved")
        batch = step % num_batches
        loss, grad = loss_and_grad(lam, batch)
        if config.rho > 0:
            eps = sam_perturbation(lam, grad, config.rho, adaptive=config.adaptive, eta=config.asam_eta)
            if config.sam_mode == "true":
                _, grad = loss_and_grad(lam.detach() + eps, batch)
            else:
                _, grad = loss_and_grad(None, batch)
        lam.grad = grad
        optimizer.step()
        losses.append(loss)
        if progress is not None:
            progress(step + 1, loss)
    vectors.materialize(lam, params)
    return LearnResult(coefficients=lam.detach().cpu().clone(), losses=losses, seconds=time.perf_counter() - start)
