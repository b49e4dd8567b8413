"""AdaMerging and SAMerging end to end: folders and unlabeled inputs in, learned coefficients and a recipe out."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from merging.errors import MergeLabError
from merging.learned.adapters import LearningSetup, model_kind, setup_causal_lm, setup_classifier
from merging.learned.objectives import entropy_loss, kl_loss
from merging.learned.recipe_io import save_learned
from merging.learned.trainer import LossFn, OptimConfig, SamMode, learn

LearnMethod = Literal["samerging", "adamerging"]
METHODS: tuple[str, ...] = ("samerging", "adamerging")


def default_config(method: LearnMethod, **overrides) -> OptimConfig:
    """The papers' settings: AdaMerging = Adam lr 1e-3; SAMerging = ASAM ρ 0.07 over Adam lr 1e-3, wd 5e-4."""
    if method == "adamerging":
        base = OptimConfig(lr=1e-3, weight_decay=0.0, rho=0.0)
    elif method == "samerging":
        base = OptimConfig(lr=1e-3, weight_decay=5e-4, rho=0.07, adaptive=True)
    else:
        raise MergeLabError(f"unknown learned merging method {method!r}: choose one of {', '.join(METHODS)}")
    return OptimConfig(**{**asdict(base), **overrides})


def make_loss(setup: LearningSetup, method: LearnMethod, temperature: float = 2.0) -> LossFn:
    """The method's per-task loss on the student's logits: entropy (AdaMerging) or KL to the teacher (SAMerging)."""
    if method == "adamerging":
        return lambda task, batch: entropy_loss(setup.student_logits(task, batch))
    if not setup.teachers:
        raise MergeLabError("SAMerging needs the teachers' outputs: build the setup with need_teachers=True")
    return lambda task, batch: kl_loss(setup.student_logits(task, batch), setup.teacher(task, batch), temperature)


@dataclass
class LearnedMerge:
    method: LearnMethod
    tasks: list[str]
    names: list[str]
    coefficients: torch.Tensor
    losses: list[float]
    seconds: float
    setup: LearningSetup = field(repr=False)

    def merged(self) -> dict[str, torch.Tensor]:
        """θ(λ) for the merged tensors (CPU, float32)."""
        return self.setup.vectors.merged(self.coefficients)


def learn_merge(
    method: LearnMethod,
    base: str | Path,
    experts: Mapping[str, str | Path],
    inputs: Mapping[str, Sequence[str]],
    *,
    steps: int = 100,
    rho: float | None = None,
    lr: float | None = None,
    sam_mode: SamMode = "true",
    adaptive: bool = True,
    granularity: Literal["layer", "task"] = "layer",
    init: float = 0.3,
    batch_size: int = 16,
    temperature: float = 2.0,
    top_k: int = 64,
    max_new_tokens: int = 32,
    device: str = "cpu",
    progress: Callable[[int, float], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> LearnedMerge:
    """Learn merging coefficients for `experts` (name → folder) over `base` from unlabeled `inputs` (expert name →
    prompts for LMs or texts for classifiers). `rho` / `lr` None take the method's defaults (ρ 0.07 for SAMerging,
    0 for AdaMerging; lr 1e-3)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MergeLabError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu")
    overrides = {"steps": steps, "sam_mode": sam_mode, "adaptive": adaptive, "granularity": granularity, "init": init}
    if rho is not None:
        overrides["rho"] = rho
    if lr is not None:
        overrides["lr"] = lr
    config = default_config(method, **overrides)
    config.check()
    kinds = {model_kind(p) for p in experts.values()}
    if len(kinds) != 1:
        raise MergeLabError("the experts mix causal LMs and classifiers: learn one kind at a time")
    need_teachers = method == "samerging"
    if kinds.pop() == "lm":
        setup = setup_causal_lm(base, experts, inputs, batch_size=batch_size, device=device,
                                need_teachers=need_teachers, temperature=temperature, top_k=top_k,
                                max_new_tokens=max_new_tokens)
    else:
        setup = setup_classifier(base, experts, inputs, batch_size=batch_size, device=device,
                                 need_teachers=need_teachers, temperature=temperature)
    result = learn(setup.vectors, setup.params, make_loss(setup, method, temperature), setup.num_batches, config,
                   progress=progress, cancel=cancel)
    return LearnedMerge(method, setup.tasks, setup.vectors.names, result.coefficients, result.losses,
                        result.seconds, setup)


def save_learned_merge(merge: LearnedMerge, out_dir: str | Path, base: str | Path,
                       experts: Mapping[str, str | Path], settings: Mapping | None = None) -> Path:
    """Write the recipe, the coefficients and a summary (losses, settings) into `out_dir`."""
    info = {"method": merge.method, "settings": dict(settings or {}), "losses": merge.losses,
            "seconds": round(merge.seconds, 3)}
    return save_learned(out_dir, base=str(base), experts={t: str(experts[t]) for t in merge.tasks},
                        names=merge.names, coefficients=merge.coefficients, info=info)
