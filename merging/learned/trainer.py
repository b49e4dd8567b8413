"""The optimisation loop shared by AdaMerging and SAMerging: Adam on λ, optionally wrapped in SAM.

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


@dataclass
class LearnResult:
    coefficients: torch.Tensor  # (T, P) layer-wise or (T,) task-wise, on the CPU
    losses: list[float] = field(default_factory=list)  # loss at λ before each update
    seconds: float = 0.0
    init: float = 0.3  # the constant λ learning started from
    init_losses: dict[float, float] = field(default_factory=dict)  # training loss at each constant start tried
    rho: float = 0.0  # the SAM radius used
    eps_ratios: list[float] = field(default_factory=list)  # ‖ε‖/‖λ‖ of each SAM step
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (updates done, held-out loss)
    best_step: int | None = None  # updates done at the returned λ (None without a held-out loss: the last λ)
    stopped_early: bool = False

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
    config.check()
    if num_batches < 1:
        raise MergeLabError("learned merging needs at least one batch of examples per task")
    missing = [n for n in vectors.names if n not in params]
    if missing:
        raise MergeLabError(f"the model has no parameter for merged tensors {missing[:3]}…: wrong architecture?")
    targets = [params[n] for n in vectors.names]
    start = time.perf_counter()

    @torch.no_grad()
    def mean_loss(coefficients: torch.Tensor, fn: LossFn, batches: int) -> float:
        """Σ_t loss averaged over `batches` batches at θ(coefficients), without gradients."""
        vectors.materialize(coefficients, params)
        return sum(float(fn(t, b)) for b in range(batches) for t in range(vectors.num_tasks)) / batches

    init_losses: dict[float, float] = {}
    init = config.init
    if config.init_grid:
        for value in config.init_grid:
            init_losses[float(value)] = mean_loss(vectors.init_coefficients(value, config.granularity), loss_fn,
                                                  num_batches)
        init = min(init_losses, key=init_losses.get)
    lam = vectors.init_coefficients(init, config.granularity).requires_grad_(True)
    optimizer = torch.optim.Adam([lam], lr=config.lr, weight_decay=config.weight_decay)
    rho = config.rho
    if config.rho_relative is not None and rho > 0:
        rho = relative_rho(lam, config.rho_relative, adaptive=config.adaptive, eta=config.asam_eta)

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

    result = LearnResult(coefficients=lam.detach().cpu().clone(), init=init, init_losses=init_losses, rho=rho)
    validate = val_loss_fn is not None and num_val_batches > 0
    best = (float("inf"), lam.detach().clone(), 0)
    since_best = 0

    def check_held_out(step: int) -> bool:
        """Record the held-out loss after `step` updates; True when learning should stop."""
        nonlocal best, since_best
        value = mean_loss(lam, val_loss_fn, num_val_batches)
        result.val_losses.append((step, value))
        if value < best[0]:
            best, since_best = (value, lam.detach().clone(), step), 0
        else:
            since_best += 1
        return config.patience > 0 and since_best >= config.patience

    if validate:
        check_held_out(0)
    for step in range(config.steps):
        if cancel is not None and cancel():
            raise MergeCancelled(f"learning cancelled after {step} of {config.steps} steps; nothing was saved")
        batch = step % num_batches
        loss, grad = loss_and_grad(lam, batch)
        if rho > 0:
            eps = sam_perturbation(lam, grad, rho, adaptive=config.adaptive, eta=config.asam_eta)
            result.eps_ratios.append(float(eps.norm() / lam.detach().norm().clamp_min(1e-12)))
            if config.sam_mode == "true":
                _, grad = loss_and_grad(lam.detach() + eps, batch)
            else:
                _, grad = loss_and_grad(None, batch)
        lam.grad = grad
        optimizer.step()
        result.losses.append(loss)
        if progress is not None:
            progress(step + 1, loss)
        done = step + 1
        if validate and (done % config.eval_every == 0 or done == config.steps) and check_held_out(done):
            result.stopped_early = done < config.steps
            break
    if validate:
        result.best_step = best[2]
        with torch.no_grad():
            lam.copy_(best[1])
    vectors.materialize(lam, params)
    result.coefficients = lam.detach().cpu().clone()
    result.seconds = time.perf_counter() - start
    return result
