"""Which merges a learned merge is compared with, and how their settings are chosen: by a score on the learning split
(the unlabeled inputs the learned merge was given; the experts' answers there are the only targets), never on the
scored set. Model-agnostic: the score is a callable, so evaluation.baselines (task sets, the Learn tab, `python -m
evaluation compare`) and the glue-bert preset's report (merging.learned.presets, sentence pairs through each
teacher's head) choose the same way.

- "task arithmetic": one λ for every expert, the best of UNIFORM_GRID;
- "task arithmetic, task-wise λ": one λ per expert, from the best uniform λ by one coordinate pass over the grid
  (expert by expert, keeping a change only when it improves) — the few scalars a learned merge may mostly be
  rebalancing;
- "TIES": the best density and λ of TIES_DENSITIES × TIES_LAMBDAS (TIES's disjoint mean normalises the weights, so
  its scale is λ).
Ties in the selection score keep the earlier candidate, so the choice is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from merging.recipe import Recipe

UNIFORM = "task arithmetic"
TASK_WISE = "task arithmetic, task-wise λ"
TIES = "TIES"
UNIFORM_GRID = (0.3, 0.5, 0.7, 1.0)
TIES_DENSITIES = (0.2, 0.5, 0.8)
TIES_LAMBDAS = (0.5, 0.7, 1.0)
CHOSEN_ON_LEARNING_SPLIT = "chosen on the learning split"

Settings = dict[str, Any]
Score = Callable[[Settings], float | None]


@dataclass
class BaselineChoice:
    """A baseline's merge settings ({method, weights, params, seed}, as the Merge tab takes them), how they were
    chosen, the selection score (agreement on the learning split, None when fixed) and every candidate's score."""

    settings: Settings
    how: str
    score: float | None = None
    tried: list[tuple[Settings, float | None]] = field(default_factory=list)

    def describe(self) -> str:
        """e.g. "λ 0.5, 0.7, 0.5 (chosen on the learning split, agreement 91% there)"."""
        params = self.settings.get("params") or {}
        if self.settings["method"] == "ties":
            what = f"density {params.get('density'):g}, λ {params.get('lambda', 1.0):g}"
        else:
            what = "λ " + ", ".join(f"{w:g}" for w in self.settings["weights"])
        score = "" if self.score is None else f", agreement {self.score:.0%} there"
        return f"{what} ({self.how}{score})"


def task_arithmetic_settings(weights: Sequence[float]) -> Settings:
    return {"method": "task_arithmetic", "weights": [float(w) for w in weights], "params": {}, "seed": 0}


def ties_settings(n_sources: int, density: float, lam: float) -> Settings:
    return {"method": "ties", "weights": [1.0] * n_sources, "params": {"density": float(density), "lambda": float(lam)},
            "seed": 0}


def settings_recipe(base_model: str, models: Sequence[str], settings: Mapping[str, Any]) -> Recipe:
    """Merge settings as a recipe over `base_model` and `models` (the refs a LiveMerger is keyed by): for a caller
    without the Merge tab's recipe builder (python -m evaluation compare, the glue-bert preset,
    the benches)."""
    data: dict[str, Any] = {
        "merge_method": settings["method"], "base_model": base_model, "dtype": "float32",
        "models": [{"model": ref, "parameters": {"weight": float(w)}} for ref, w in zip(models, settings["weights"],
                                                                                        strict=True)],
    }
    if settings.get("params"):
        data["parameters"] = dict(settings["params"])
    return Recipe.from_dict(data)


def choose(score: Score, n_sources: int, how: str = CHOSEN_ON_LEARNING_SPLIT) -> dict[str, BaselineChoice]:
    """Uniform and task-wise task arithmetic and TIES, each at its best settings by `score(settings)` (higher is
    better; None counts lowest), in that order."""
    uniform = _best([task_arithmetic_settings([w] * n_sources) for w in UNIFORM_GRID], score, how)
    task_wise = _coordinate_pass(uniform, score, how)
    ties = _best([ties_settings(n_sources, d, lam) for d in TIES_DENSITIES for lam in TIES_LAMBDAS], score, how)
    return {UNIFORM: uniform, TASK_WISE: task_wise, TIES: ties}


def _key(value: float | None) -> float:
    return -1.0 if value is None else value


def _best(candidates: list[Settings], score: Score, how: str) -> BaselineChoice:
    tried = [(c, score(c)) for c in candidates]
    best = max(range(len(tried)), key=lambda i: (_key(tried[i][1]), -i))  # the earliest of equals
    return BaselineChoice(tried[best][0], how, tried[best][1], tried)


def _coordinate_pass(start: BaselineChoice, score: Score, how: str) -> BaselineChoice:
    """From the best uniform λ, each expert's λ in turn set to the best of UNIFORM_GRID with the others held."""
    weights, best = list(start.settings["weights"]), start.score
    tried = list(start.tried)
    for i in range(len(weights)):
        for w in UNIFORM_GRID:
            if w == weights[i]:
                continue
            candidate = task_arithmetic_settings(weights[:i] + [w] + weights[i + 1:])
            value = score(candidate)
            tried.append((candidate, value))
            if _key(value) > _key(best):
                weights, best = candidate["weights"], value
    return BaselineChoice(task_arithmetic_settings(weights), how, best, tried)
