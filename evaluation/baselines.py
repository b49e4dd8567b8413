"""A learned merge beside the merges it should beat: which baselines (task arithmetic and TIES), all scored on the same
tasks by one evaluator, and why a learned merge that does not beat task arithmetic may not."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch

from evaluation.agreement import EvalResult, Evaluator, compare_merges
from merging.recipe import Recipe

# Baselines the learned merge is compared with (weights as FusionBench's GPT-2 reference settings).
BASELINES = {"task arithmetic": ("task_arithmetic", {}), "TIES": ("ties", {"density": 0.5})}
BASELINE_WEIGHT = 0.5
REFERENCE = "task arithmetic"  # the baseline a learned merge is expected to beat

# Why a learned merge can lose to task arithmetic, shown beside the comparison when it does.
WHY_NOT = {
    "adamerging": ("AdaMerging minimises the merge's entropy, which rewards confident outputs, not the experts' "
                   "answers: on the LM zoo the most confident merge echoes the base (docs/learned-merging.md). "
                   "SAMerging distils each expert instead."),
    "samerging": ("SAMerging matches the experts on the unlabeled inputs it was given; with few of them (or inputs "
                  "unlike the scored tasks) the held-out KL it stopped at does not carry over. Try more examples per "
                  "task."),
}

Weights = Mapping[str, torch.Tensor]


def learned_label(method: str) -> str:
    """The learned merge's name in the comparison, e.g. "learned (samerging)"."""
    return f"learned ({method})"


def baseline_settings(n_sources: int) -> dict[str, dict[str, Any]]:
    """Each baseline's merge settings ({method, weights, params, seed}, as the Merge tab takes them): every source at
    BASELINE_WEIGHT."""
    return {name: {"method": method, "weights": [BASELINE_WEIGHT] * n_sources, "params": dict(params), "seed": 0}
            for name, (method, params) in BASELINES.items()}


def settings_recipe(base_model: str, models: Sequence[str], settings: Mapping[str, Any]) -> Recipe:
    """Merge settings as baseline_settings gives them, as a recipe over `base_model` and `models` (the refs a
    LiveMerger is keyed by): for a caller without the Merge tab's recipe builder (python -m evaluation compare)."""
    data: dict[str, Any] = {
        "merge_method": settings["method"], "base_model": base_model, "dtype": "float32",
        "models": [{"model": ref, "parameters": {"weight": float(w)}} for ref, w in zip(models, settings["weights"],
                                                                                        strict=True)],
    }
    if settings.get("params"):
        data["parameters"] = dict(settings["params"])
    return Recipe.from_dict(data)


def compare_with_baselines(evaluator: Evaluator, method: str, learned: Callable[[], Weights],
                           merge: Callable[[dict[str, Any]], Weights], n_sources: int) -> dict[str, EvalResult]:
    """The learned merge (`learned()` returns its weights), then each baseline (`merge(settings)` merges the sources
    with a baseline's settings), scored on the evaluator's tasks; keyed by learned_label(method) and the baselines'
    names, in that order."""
    baselines = {name: partial(merge, settings) for name, settings in baseline_settings(n_sources).items()}
    return compare_merges(evaluator, {learned_label(method): learned, **baselines})


def why_not_better(method: str, scores: Mapping[str, EvalResult]) -> str | None:
    """The reason shown when the learned merge's mean agreement is no better than task arithmetic's; None when it is
    better, or when either has no agreement score."""
    learned = scores[learned_label(method)].mean("agreement")
    reference = scores[REFERENCE].mean("agreement")
    if learned is not None and reference is not None and learned <= reference:
        return WHY_NOT[method]
    return None
