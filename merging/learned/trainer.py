"""The optimisation loop shared by AdaMerging and SAMerging: Adam (or SGD with momentum) on λ, optionally in SAM.

The loop knows nothing about models: it takes the model's parameters for the merged tensors (which it overwrites
with θ(λ)) and a loss function `loss_fn(task, batch) -> scalar` that runs the model on task t's cached batch.

Three things make the defaults dependable (docs/learned-merging.md):
- a start chosen by the loss itself: with `init_grid`, the training loss is measured at a few constant λ and
  learning starts from the best (where task arithmetic is good, without any labels);
- early stopping on held-out inputs: `val_loss_fn` is evaluated (no gradient, never used for an update) every
  `eval_every` steps; the λ with the lowest held-out loss is returned and learning stops after `patience`
  evaluations without improvement;
- a SAM radius on the scale of λ: `rho_relative` sets ρ so that ‖ε‖ ≈ rho_relative · ‖λ‖ at the start (adaptive SAM
  scales ε by |λ|, so a fixed ρ means a different relative step for every size of λ); the measured ‖ε‖/‖λ‖ of
  every step is returned.
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
BaseOptimizer = Literal["adam", "sgd"]


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
    init_grid: tuple[float, ...] = ()  # constant starts tried by the training loss; () = start at `init`
    rho_relative: float | None = None  # when set (and rho > 0 or rho unset), ρ = this fraction of ‖λ‖ (see above)
    eval_every: int = 10  # held-out loss every this many steps (when a held-out loss is given)
    patience: int = 0  # stop after this many held-out evaluations without improvement; 0 = never stop early
    optimizer: BaseOptimizer = "adam"  # the base step SAM wraps: Adam, or SGD with `momentum` (the SAMerging code)
    momentum: float = 0.0  # SGD only
    normalize: bool = False  # learn λ for τ/‖τ‖ (each task vector of each tensor at unit norm, the SAMerging code)

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
        if self.rho_relative is not None and not 0 <= self.rho_relative <= 1:
            raise MergeLabError(f"the relative SAM radius ‖ε‖/‖λ‖ must be between 0 and 1, not {self.rho_relative}")
        if self.eval_every < 1 or self.patience < 0:
            raise MergeLabError("eval_every must be at least 1 and patience at least 0")
        if self.optimizer not in ("adam", "sgd"):
            raise MergeLabError(f"the base optimiser must be 'adam' or 'sgd', not {self.optimizer!r}")
        if not 0 <= self.momentum < 1:
            raise MergeLabError(f"SGD momentum must be in [0, 1), not {self.momentum}")


@dataclass
class LearnResult:
    coefficients: torch.Tensor  # θ(λ) = θ0 + Σ λ τ: (T, P) layer-wise or (T,) task-wise, on the CPU
    losses: list[float] = field(default_factory=list)  # loss at λ before each update
    seconds: float = 0.0
    init: float = 0.3  # the constant λ learning started from
    init_losses: dict[float, float] = field(default_factory=dict)  # training loss at each constant start tried
    rho: float = 0.0  # the SAM radius used
    eps_ratios: list[float] = field(default_factory=list)  # ‖ε‖/‖λ‖ of each SAM step
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (updates done, held-out loss)
    best_step: int | None = None  # updates done at the returned λ (None without a held-out loss: the last λ)
    stopped_early: bool = False
    normalized_coefficients: torch.Tensor | None = None  # with `normalize`: λ as learned, for τ/‖τ‖

    @property
    def eps_ratio(self) -> float | None:
        """Mean ‖ε‖/‖λ‖ over the SAM steps (None without SAM)."""
        return sum(self.eps_ratios) / len(self.eps_ratios) if self.eps_ratios else None


def relative_rho(lam: torch.Tensor, ratio: float, *, adaptive: bool, eta: float) -> float:
    """ρ that makes ‖ε‖ ≈ ratio · ‖λ‖. Standard SAM: ‖ε‖ = ρ. Adaptive SAM: ε = ρ·T²g/‖Tg‖ with T = |λ| + η, so
    ‖ε‖ ≈ ρ · rms(T) when the gradient is spread evenly; λ = 0 (no scale of its own) falls back to ‖ε‖ = ratio·√n·η."""
    lam = lam.detach()
    norm = float(lam.norm())
    if not adaptive:
        return ratio * norm
    typical = float((lam.abs() + eta).pow(2).mean().sqrt())
    return ratio * (norm if norm > 0 else eta * lam.numel() ** 0.5) / typical


def learn(
    vectors: TaskVectors,
    params: Mapping[str, torch.Tensor],
    loss_fn: LossFn,
    num_batches: int,
    config: OptimConfig,
    *,
    val_loss_fn: LossFn | None = None,
    num_val_batches: int = 0,
    progress: Callable[[int, float], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> LearnResult:
    """Learn λ by minimising Σ_t loss_fn(t, batch) with Adam (and SAM when rho > 0), replaying the cached batches in
    order: step i uses batch i mod num_batches of every task. `params[name]` are the model's leaf tensors for the
    merged names (requires_grad=True); they hold θ(λ_returned) when this returns. `val_loss_fn(t, batch)` over
    `num_val_batches` held-out batches only chooses which λ to return and when to stop: it runs without gradient and
    never enters an update. Raises MergeCancelled when `cancel()` turns true between steps."""
    _check_arguments(vectors, params, num_batches, config)
    objective = _Objective(vectors, params, loss_fn, config.granularity,
                           _unit_norm_scale(vectors) if config.normalize else None)
    start = time.perf_counter()
    init, init_losses = _choose_start(objective, num_batches, config)
    lam = vectors.init_coefficients(init, config.granularity).requires_grad_(True)
    optimizer = _base_optimizer(lam, config)
    rho = _sam_radius(lam, config)
    result = LearnResult(coefficients=lam.detach().cpu().clone(), init=init, init_losses=init_losses, rho=rho)
    held_out = None
    if val_loss_fn is not None and num_val_batches > 0:
        held_out = _HeldOut(objective, val_loss_fn, num_val_batches, config.patience, lam, result.val_losses)
        held_out.check(lam, 0)
    for step in range(config.steps):
        if cancel is not None and cancel():
            raise MergeCancelled(f"learning cancelled after {step} of {config.steps} steps; nothing was saved")
        loss = _update(objective, optimizer, lam, step % num_batches, rho, config, result.eps_ratios)
        result.losses.append(loss)
        if progress is not None:
            progress(step + 1, loss)
        done = step + 1
        if held_out is not None and (done % config.eval_every == 0 or done == config.steps) and held_out.check(lam, done):
            result.stopped_early = done < config.steps
            break
    if held_out is not None:
        result.best_step = held_out.restore_best(lam)
    vectors.materialize(objective.effective(lam), params)
    result.coefficients = objective.effective(lam).detach().cpu().clone()
    if config.normalize:
        result.normalized_coefficients = lam.detach().cpu().clone()
    result.seconds = time.perf_counter() - start
    return result


def _base_optimizer(lam: torch.Tensor, config: OptimConfig) -> torch.optim.Optimizer:
    """Adam, or SGD with momentum (the SAMerging code's base optimiser under SAM), on λ."""
    if config.optimizer == "sgd":
        return torch.optim.SGD([lam], lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam([lam], lr=config.lr, weight_decay=config.weight_decay)


def _unit_norm_scale(vectors: TaskVectors) -> torch.Tensor:
    """1/‖τ_t^l‖ per task and tensor (0 where τ_t^l = 0): λ·scale is the coefficient of the raw τ."""
    norms = vectors.tensor_norms()
    return torch.where(norms > 0, 1.0 / norms.clamp_min(1e-30), torch.zeros_like(norms))


def _check_arguments(vectors: TaskVectors, params: Mapping[str, torch.Tensor], num_batches: int,
                     config: OptimConfig) -> None:
    config.check()
    if num_batches < 1:
        raise MergeLabError("learned merging needs at least one batch of examples per task")
    missing = [n for n in vectors.names if n not in params]
    if missing:
        raise MergeLabError(f"the model has no parameter for merged tensors {missing[:3]}…: wrong architecture?")


class _Objective:
    """The model at θ(λ) and its losses: writes θ(coefficients) into `params`, then runs the loss on a batch.
    With a `scale` (T, P) the coefficients are learned for scale·τ (unit-norm task vectors): θ uses λ·scale and
    the gradient is ∂L/∂(λ·scale) · scale, summed over tensors for task-wise λ."""

    def __init__(self, vectors: TaskVectors, params: Mapping[str, torch.Tensor], loss_fn: LossFn,
                 granularity: Granularity, scale: torch.Tensor | None = None):
        self.vectors, self.params, self.loss_fn, self.granularity = vectors, params, loss_fn, granularity
        self.targets = [params[n] for n in vectors.names]
        self.scale = scale

    def effective(self, coefficients: torch.Tensor) -> torch.Tensor:
        """The coefficients of the raw task vectors: λ itself, or λ·scale (then always (T, P))."""
        if self.scale is None:
            return coefficients
        return self.vectors.full(coefficients) * self.scale

    @torch.no_grad()
    def mean_loss(self, coefficients: torch.Tensor, fn: LossFn, batches: int) -> float:
        """Σ_t fn averaged over `batches` batches at θ(coefficients), without gradients."""
        self.vectors.materialize(self.effective(coefficients), self.params)
        return sum(float(fn(t, b)) for b in range(batches) for t in range(self.vectors.num_tasks)) / batches

    def loss_and_grad(self, coefficients: torch.Tensor | None, batch: int) -> tuple[float, torch.Tensor]:
        """Training loss and ∂L/∂λ at θ(coefficients); None reuses whatever θ the model holds (the research code's
        cache)."""
        if coefficients is not None:
            self.vectors.materialize(self.effective(coefficients), self.params)
        for p in self.targets:
            p.grad = None
        total = 0.0
        for task in range(self.vectors.num_tasks):  # one backward per task bounds activation memory
            loss = self.loss_fn(task, batch)
            loss.backward()
            total += float(loss.detach())
        grads = {n: p.grad for n, p in zip(self.vectors.names, self.targets)}
        if self.scale is None:
            return total, self.vectors.coefficient_grad(grads, self.granularity)
        g = self.vectors.coefficient_grad(grads, "layer") * self.scale
        return total, g if self.granularity == "layer" else g.sum(dim=1)


def _choose_start(objective: _Objective, num_batches: int, config: OptimConfig) -> tuple[float, dict[float, float]]:
    """(the constant λ to start from, the training loss at each constant tried): `init`, or with `init_grid` the
    constant of the grid with the lowest training loss."""
    init_losses: dict[float, float] = {}
    if not config.init_grid:
        return config.init, init_losses
    for value in config.init_grid:
        start = objective.vectors.init_coefficients(value, config.granularity)
        init_losses[float(value)] = objective.mean_loss(start, objective.loss_fn, num_batches)
    return min(init_losses, key=init_losses.get), init_losses


def _sam_radius(lam: torch.Tensor, config: OptimConfig) -> float:
    """ρ as given, or, with `rho_relative` and SAM on, the ρ that makes ‖ε‖ ≈ rho_relative · ‖λ‖ at the start."""
    if config.rho_relative is not None and config.rho > 0:
        return relative_rho(lam, config.rho_relative, adaptive=config.adaptive, eta=config.asam_eta)
    return config.rho


def _update(objective: _Objective, optimizer: torch.optim.Optimizer, lam: torch.Tensor, batch: int, rho: float,
            config: OptimConfig, eps_ratios: list[float]) -> float:
    """One base-optimiser step on λ; with rho > 0 the step takes SAM's second gradient (at θ(λ+ε), or at the cached θ(λ) in
    "repo" mode) and records ‖ε‖/‖λ‖. Returns the loss at λ before the step."""
    loss, grad = objective.loss_and_grad(lam, batch)
    if rho > 0:
        eps = sam_perturbation(lam, grad, rho, adaptive=config.adaptive, eta=config.asam_eta)
        eps_ratios.append(float(eps.norm() / lam.detach().norm().clamp_min(1e-12)))
        perturbed = lam.detach() + eps if config.sam_mode == "true" else None
        _, grad = objective.loss_and_grad(perturbed, batch)
    lam.grad = grad
    optimizer.step()
    return loss


class _HeldOut:
    """Early stopping: the held-out loss at λ after some updates, the best λ so far, and when patience runs out."""

    def __init__(self, objective: _Objective, loss_fn: LossFn, num_batches: int, patience: int, lam: torch.Tensor,
                 record: list[tuple[int, float]]):
        self.objective, self.loss_fn, self.num_batches, self.patience = objective, loss_fn, num_batches, patience
        self.record = record  # (updates done, held-out loss), appended at each check
        self.best_loss, self.best_lam, self.best_step = float("inf"), lam.detach().clone(), 0
        self.since_best = 0

    def check(self, lam: torch.Tensor, step: int) -> bool:
        """Record the held-out loss after `step` updates; True when learning should stop."""
        value = self.objective.mean_loss(lam, self.loss_fn, self.num_batches)
        self.record.append((step, value))
        if value < self.best_loss:
            self.best_loss, self.best_lam, self.best_step, self.since_best = value, lam.detach().clone(), step, 0
        else:
            self.since_best += 1
        return self.patience > 0 and self.since_best >= self.patience

    def restore_best(self, lam: torch.Tensor) -> int:
        """Copy the best λ back into `lam`; returns the updates done at it."""
        with torch.no_grad():
            lam.copy_(self.best_lam)
        return self.best_step
