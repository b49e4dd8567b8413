"""AdaMerging and SAMerging end to end: folders and unlabeled inputs in, learned coefficients and a recipe out."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from merging.errors import MergeLabError
from merging.learned.adapters import Kind, LearningSetup, model_kind, setup_causal_lm, setup_classifier
from merging.learned.objectives import entropy_loss, kl_loss
from merging.learned.recipe_io import save_learned
from merging.learned.trainer import LearnResult, LossFn, OptimConfig, SamMode, learn

LearnMethod = Literal["samerging", "adamerging"]
METHODS: tuple[str, ...] = ("samerging", "adamerging")
Defaults = Literal["mergelab", "paper"]
DEFAULTS: tuple[str, ...] = ("mergelab", "paper")

# Defaults chosen on the zoo (docs/learned-merging.md, "Defaults"): the papers' lr 1e-3 moves λ by ~0.3 in 300
# steps, too little to converge in an interactive budget; a start searched over constant λ puts learning where task
# arithmetic is already good; early stopping on a held-out quarter of the inputs picks the step.
DEFAULT_STEPS = 200
DEFAULT_LR = 1e-2
INIT_GRID = (0.1, 0.3, 0.5, 0.7, 1.0)
DEFAULT_HOLDOUT = 0.25
DEFAULT_RHO_RELATIVE = 0.05  # ‖ε‖ ≈ 5 % of ‖λ‖ (ASAM's ρ 0.07 gave 0.8 % on the LM zoo: no effect at all)


# The public SAMerging code (github.com/arshandalili/SAMerging, config/method/samerging.yaml and
# fusion_bench/models/wrappers/layer_wise_fusion.py): SGD lr 1e-3 momentum 0.99 weight decay 5e-4 under ASAM ρ 0.07
# (ε = ρ·λ²g/‖|λ|g‖, no η), λ starting at 0, each task vector of each tensor divided by its norm, 10 epochs × 100
# steps, no held-out inputs. AdaMerging's code: Adam lr 1e-3 from 0.3, raw task vectors.
PAPER_STEPS = 1000
PAPER = {
    "samerging": {"steps": PAPER_STEPS, "lr": 1e-3, "optimizer": "sgd", "momentum": 0.99, "weight_decay": 5e-4,
                  "rho": 0.07, "adaptive": True, "asam_eta": 0.0, "init": 0.0, "normalize": True},
    "adamerging": {"steps": PAPER_STEPS, "lr": 1e-3, "optimizer": "adam", "weight_decay": 0.0, "rho": 0.0,
                   "init": 0.3},
}


def default_config(method: LearnMethod, defaults: Defaults = "mergelab", **overrides) -> OptimConfig:
    """MergeLab's defaults: Adam lr 1e-2 from the best constant start of INIT_GRID, early stopping (eval every 10
    steps, patience 5); SAMerging adds ASAM with ‖ε‖ ≈ 5 % of ‖λ‖ and weight decay 5e-4 (the paper's).
    `defaults="paper"`: the settings of each paper's public code (PAPER; docs/learned-merging.md "Where MergeLab
    departs from the paper's code"): a fixed start, no early stopping, SAMerging with SGD momentum 0.99 on λ for
    unit-norm task vectors."""
    if method not in METHODS:
        raise MergeLabError(f"unknown learned merging method {method!r}: choose one of {', '.join(METHODS)}")
    if defaults not in DEFAULTS:
        raise MergeLabError(f"unknown defaults {defaults!r}: choose one of {', '.join(DEFAULTS)}")
    if defaults == "paper":
        return OptimConfig(**{**asdict(OptimConfig(**PAPER[method])), **overrides})
    common = {"steps": DEFAULT_STEPS, "lr": DEFAULT_LR, "init_grid": INIT_GRID, "eval_every": 10, "patience": 5}
    if method == "adamerging":
        base = OptimConfig(**common, weight_decay=0.0, rho=0.0)
    else:
        base = OptimConfig(**common, weight_decay=5e-4, rho=0.07, rho_relative=DEFAULT_RHO_RELATIVE, adaptive=True)
    return OptimConfig(**{**asdict(base), **overrides})


def split_heldout(inputs: Mapping[str, Sequence[str]], fraction: float) -> tuple[dict[str, list[str]],
                                                                                  dict[str, list[str]]]:
    """(train, held-out): the last round(fraction · n) inputs of each task (at least one when fraction > 0 and the
    task has two or more; none when it has one) are held out. Inputs listed twice count once, so no text can be on
    both sides."""
    if not 0 <= fraction < 1:
        raise MergeLabError(f"the held-out fraction must be in [0, 1), not {fraction}")
    train, heldout = {}, {}
    for task, items in inputs.items():
        unique = list(dict.fromkeys(tuple(i) if isinstance(i, list) else i for i in items))
        k = 0 if fraction == 0 or len(unique) < 2 else min(len(unique) - 1, max(1, round(fraction * len(unique))))
        train[task], heldout[task] = unique[:len(unique) - k], unique[len(unique) - k:]
    return train, heldout


def make_loss(setup: LearningSetup, method: LearnMethod, temperature: float = 2.0, split: str = "train") -> LossFn:
    """The method's per-task loss on the student's logits: entropy (AdaMerging) or KL to the teacher (SAMerging),
    on the training batches or (split="heldout") the held-out ones."""
    if method == "adamerging":
        return lambda task, batch: entropy_loss(setup.student_logits(task, batch, split))
    if not setup.teachers:
        raise MergeLabError("SAMerging needs the teachers' outputs: build the setup with need_teachers=True")
    return lambda task, batch: kl_loss(setup.student_logits(task, batch, split), setup.teacher(task, batch, split),
                                       temperature)


@dataclass
class LearnedMerge:
    method: LearnMethod
    tasks: list[str]
    names: list[str]
    coefficients: torch.Tensor
    losses: list[float]
    seconds: float
    setup: LearningSetup = field(repr=False)
    result: LearnResult | None = field(default=None, repr=False)  # start, ρ, ‖ε‖/‖λ‖, held-out curve
    heldout: dict[str, list[str]] = field(default_factory=dict, repr=False)  # the inputs learning never saw
    inputs: dict[str, list] = field(default_factory=dict, repr=False)  # the learning split: every input given

    def merged(self) -> dict[str, torch.Tensor]:
        """θ(λ) for the merged tensors (CPU, float32)."""
        return self.setup.vectors.merged(self.coefficients)


def learn_merge(
    method: LearnMethod,
    base: str | Path,
    experts: Mapping[str, str | Path],
    inputs: Mapping[str, Sequence[str]],
    *,
    defaults: Defaults = "mergelab",
    steps: int | None = None,
    rho: float | None = None,
    rho_relative: float | None = None,
    lr: float | None = None,
    sam_mode: SamMode = "true",
    adaptive: bool = True,
    granularity: Literal["layer", "task"] = "layer",
    init: float | Literal["auto"] = "auto",
    holdout: float | None = None,
    patience: int | None = None,
    eval_every: int | None = None,
    batch_size: int = 16,
    temperature: float = 2.0,
    top_k: int = 64,
    max_new_tokens: int = 32,
    device: str = "cpu",
    progress: Callable[[int, float], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> LearnedMerge:
    """Learn merging coefficients for `experts` (name → folder) over `base` from unlabeled `inputs` (expert name →
    prompts for LMs or texts for classifiers).

    Defaults (see `default_config`; None keeps them): `steps` 200; init "auto" starts from the constant λ of
    INIT_GRID with the lowest training loss; `holdout` (0.25) of each task's inputs is kept aside (never learned on)
    for early stopping with `patience` evaluations every `eval_every` steps (patience 0 = off; holdout 0 also turns
    it off; merging.learned.budget sizes eval_every to the steps); lr 1e-2. SAMerging's
    radius: `rho_relative` (default 5 %) sets ρ so that ‖ε‖ ≈ rho_relative·‖λ‖; an explicit `rho` is used as given
    (0 = plain Adam). AdaMerging has no ρ. `defaults="paper"` starts from the papers' code instead (1,000 steps,
    no held-out inputs, the paper's start and optimiser; SAMerging on unit-norm task vectors); options given
    explicitly still override it."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MergeLabError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu")
    config = _options_config(method, defaults, steps=steps, rho=rho, rho_relative=rho_relative, lr=lr,
                             sam_mode=sam_mode, adaptive=adaptive, granularity=granularity, init=init,
                             patience=patience, eval_every=eval_every)
    if holdout is None:
        holdout = 0.0 if defaults == "paper" else DEFAULT_HOLDOUT
    kind = _experts_kind(experts)
    train, heldout = split_heldout({t: inputs.get(t, []) for t in experts}, holdout)
    setup = _learning_setup(kind, method, base, experts, train, heldout, batch_size=batch_size,
                            temperature=temperature, top_k=top_k, max_new_tokens=max_new_tokens, device=device)
    val_loss = make_loss(setup, method, temperature, "heldout") if setup.num_heldout_batches else None
    result = learn(setup.vectors, setup.params, make_loss(setup, method, temperature), setup.num_batches, config,
                   val_loss_fn=val_loss, num_val_batches=setup.num_heldout_batches, progress=progress, cancel=cancel)
    return LearnedMerge(method, setup.tasks, setup.vectors.names, result.coefficients, result.losses,
                        result.seconds, setup, result, heldout, {t: list(inputs.get(t, [])) for t in experts})


def _options_config(method: LearnMethod, defaults: Defaults, *, steps: int | None, rho: float | None,
                    rho_relative: float | None, lr: float | None, sam_mode: SamMode, adaptive: bool,
                    granularity: Literal["layer", "task"], init: float | Literal["auto"], patience: int | None,
                    eval_every: int | None = None) -> OptimConfig:
    """The method's default_config with learn_merge's options applied (None and "auto" keep the default), checked."""
    overrides: dict = {"sam_mode": sam_mode, "adaptive": adaptive, "granularity": granularity}
    if steps is not None:
        overrides["steps"] = steps
    if init != "auto":
        overrides.update(init=float(init), init_grid=())
    if method == "samerging" and rho is not None:
        overrides.update(rho=rho, rho_relative=rho_relative)  # an explicit ρ wins unless a relative one is given too
    elif method == "samerging" and rho_relative is not None:
        overrides["rho_relative"] = rho_relative
    if lr is not None:
        overrides["lr"] = lr
    if patience is not None:
        overrides["patience"] = patience
    if eval_every is not None:
        overrides["eval_every"] = eval_every
    config = default_config(method, defaults, **overrides)
    config.check()
    return config


def _experts_kind(experts: Mapping[str, str | Path]) -> Kind:
    """"lm" or "classifier": the one kind all the experts share."""
    kinds = {model_kind(p) for p in experts.values()}
    if len(kinds) != 1:
        raise MergeLabError("the experts mix causal LMs and classifiers: learn one kind at a time")
    return kinds.pop()


def _learning_setup(kind: Kind, method: LearnMethod, base: str | Path, experts: Mapping[str, str | Path],
                    train: Mapping[str, Sequence[str]], heldout: Mapping[str, Sequence[str]], *, batch_size: int,
                    temperature: float, top_k: int, max_new_tokens: int, device: str) -> LearningSetup:
    """The kind's learning setup; the teachers' outputs are computed only for SAMerging (AdaMerging needs none)."""
    need_teachers = method == "samerging"
    if kind == "lm":
        return setup_causal_lm(base, experts, train, batch_size=batch_size, device=device,
                               need_teachers=need_teachers, temperature=temperature, top_k=top_k,
                               max_new_tokens=max_new_tokens, heldout=heldout)
    return setup_classifier(base, experts, train, batch_size=batch_size, device=device,
                            need_teachers=need_teachers, temperature=temperature, heldout=heldout)


def learn_summary(merge: LearnedMerge) -> dict:
    """What a report shows about a run: start, ρ and ‖ε‖/‖λ‖, held-out loss, step kept, early stop."""
    r = merge.result
    if r is None:
        return {}
    return {"init": r.init, "init_losses": r.init_losses, "rho": r.rho, "eps_ratio": r.eps_ratio,
            "steps_run": len(r.losses), "best_step": r.best_step, "stopped_early": r.stopped_early,
            "heldout_loss": min((v for _, v in r.val_losses), default=None),
            "heldout_examples": sum(len(v) for v in merge.heldout.values())}


def describe_run(merge: LearnedMerge) -> str:
    """One line on the start, the SAM radius, early stopping and the held-out loss of a learned merge."""
    s = learn_summary(merge)
    if not s:
        return ""
    parts = [f"start λ = {s['init']:g}" + (" (best constant by the training loss)" if s["init_losses"] else "")]
    if s["eps_ratio"] is not None:
        parts.append(f"ρ = {s['rho']:.3g}, ‖ε‖/‖λ‖ = {100 * s['eps_ratio']:.1f} %")
    if s["best_step"] is not None:
        stop = f"stopped early after {s['steps_run']} steps" if s["stopped_early"] else f"{s['steps_run']} steps"
        parts.append(f"{stop}; kept step {s['best_step']} (held-out loss {s['heldout_loss']:.4f} on "
                     f"{s['heldout_examples']} held-out inputs)")
    return "; ".join(parts)


def save_learned_merge(merge: LearnedMerge, out_dir: str | Path, base: str | Path,
                       experts: Mapping[str, str | Path], settings: Mapping | None = None) -> Path:
    """Write the recipe, the coefficients and a summary (losses, settings, the learning split: baselines are chosen
    on it when the merge is compared) into `out_dir`."""
    info = {"method": merge.method, "settings": dict(settings or {}), "losses": merge.losses,
            "seconds": round(merge.seconds, 3), **learn_summary(merge), "learning_inputs": merge.inputs}
    return save_learned(out_dir, base=str(base), experts={t: str(experts[t]) for t in merge.tasks},
                        names=merge.names, coefficients=merge.coefficients, info=info)
