"""A learned merge beside the merges it should beat, chosen fairly: which baselines, how their settings are picked on
the learning split (never on the scored set), all scored on the same tasks by one evaluator, and why a learned
merge that does not beat task arithmetic may not.

Baselines (`choose_baselines`), each picked by agreement with the experts on the learning split (the unlabeled
inputs the learned merge was given; the experts' answers there are the only targets, as for the learner):
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
from functools import partial
from typing import Any

import torch

from evaluation.agreement import EvalResult, Evaluator, compare_merges
from evaluation.scoring import token_limit
from evaluation.stats import ScoredSetError, direction, scored_set_error
from evaluation.tasks import TaskSet, tasks_from_records
from merging.errors import TaskSetError
from merging.recipe import Recipe

UNIFORM = "task arithmetic"
TASK_WISE = "task arithmetic, task-wise λ"
TIES = "TIES"
REFERENCE = UNIFORM  # the baseline a learned merge is expected to beat
UNIFORM_GRID = (0.3, 0.5, 0.7, 1.0)
TIES_DENSITIES = (0.2, 0.5, 0.8)
TIES_LAMBDAS = (0.5, 0.7, 1.0)
SELECTION_METRIC = "agreement"
BASELINE_WEIGHT = 0.5  # the fixed weight used only when there is no learning split to choose on

# Why a learned merge can lose to task arithmetic, shown beside the comparison when it does.
WHY_NOT = {
    "adamerging": ("AdaMerging minimises the merge's entropy, which rewards confident outputs, not the experts' "
                   "answers: on the LM zoo the most confident merge echoes the base (docs/learned-merging.md). "
                   "SAMerging distils each expert instead."),
    "samerging": ("SAMerging matches the experts on the unlabeled inputs it was given; with few of them (or inputs "
                  "unlike the scored tasks) the held-out KL it stopped at does not carry over, and task arithmetic "
                  "chosen on the same inputs is a strong baseline. Try more examples per task."),
}

Weights = Mapping[str, torch.Tensor]
Settings = dict[str, Any]


@dataclass
class BaselineChoice:
    """A baseline's merge settings ({method, weights, params, seed}, as the Merge tab takes them), how they were
    chosen, the selection score (agreement on the learning split, None when fixed) and every candidate's score."""

    settings: Settings
    how: str
    score: float | None = None
    tried: list[tuple[Settings, float | None]] = field(default_factory=list)

    def describe(self) -> str:
        """e.g. "λ 0.5, 0.7, 0.5 (agreement 91 % on the learning split)"."""
        params = self.settings.get("params") or {}
        if self.settings["method"] == "ties":
            what = f"density {params.get('density'):g}, λ {params.get('lambda', 1.0):g}"
        else:
            what = "λ " + ", ".join(f"{w:g}" for w in self.settings["weights"])
        score = "" if self.score is None else f", agreement {self.score:.0%} on the learning split"
        return f"{what} ({self.how}{score})"


def learned_label(method: str) -> str:
    """The learned merge's name in the comparison, e.g. "learned (samerging)"."""
    return f"learned ({method})"


def task_arithmetic_settings(weights: Sequence[float]) -> Settings:
    return {"method": "task_arithmetic", "weights": [float(w) for w in weights], "params": {}, "seed": 0}


def ties_settings(n_sources: int, density: float, lam: float) -> Settings:
    return {"method": "ties", "weights": [1.0] * n_sources, "params": {"density": float(density), "lambda": float(lam)},
            "seed": 0}


def fixed_baselines(n_sources: int) -> dict[str, BaselineChoice]:
    """Baselines at fixed settings (every source at BASELINE_WEIGHT, TIES density 0.5 λ 1): only for a comparison
    with no learning split to choose on; said so in each description."""
    how = "fixed: no learning split to choose on"
    return {UNIFORM: BaselineChoice(task_arithmetic_settings([BASELINE_WEIGHT] * n_sources), how),
            TIES: BaselineChoice(ties_settings(n_sources, 0.5, 1.0), how)}


def learning_tasks(inputs: Mapping[str, Sequence[Any]], scored: TaskSet, tokenizer=None) -> TaskSet:
    """The learning split as a task set: one task per expert (named after it), its unlabeled inputs, no answers;
    answer type, stop strings and token limit as the scored task that expert owns (the first one), so answers are
    extracted and generated as they are when scoring."""
    owned = {}
    for task in scored.tasks.values():
        owned.setdefault(task.expert, task)
    records = []
    for expert, items in inputs.items():
        like = owned.get(expert)
        if like is None:
            raise TaskSetError(f"No scored task belongs to expert {expert!r}: the learning split's inputs of an "
                               "expert are scored like its own task, so the task set needs one.")
        limit = like.max_new_tokens or (token_limit(like, tokenizer) if tokenizer is not None else None)
        for item in items:
            record = {"task": expert, "expert": expert, ("text" if like.is_classification else "prompt"): item}
            if not like.is_classification:
                record["answer_type"] = "number" if like.numeric else "text"
                if like.stop:
                    record["stop"] = list(like.stop)
                if limit:
                    record["max_new_tokens"] = limit
            records.append(record)
    return tasks_from_records(records, source="the learning split")


def choose_baselines(selector: Evaluator, merge: Callable[[Settings], Weights], n_sources: int
                     ) -> dict[str, BaselineChoice]:
    """Uniform and task-wise task arithmetic and TIES, each at its best settings by mean agreement on `selector`'s
    tasks (learning_tasks: the learning split). `merge(settings)` returns the merged weights."""
    def score(settings: Settings) -> float | None:
        return selector.score_state(merge(settings)).mean(SELECTION_METRIC)

    how = "chosen on the learning split"
    uniform = _best([task_arithmetic_settings([w] * n_sources) for w in UNIFORM_GRID], score, how)
    task_wise = _coordinate_pass(uniform, score, how)
    ties = _best([ties_settings(n_sources, d, lam) for d in TIES_DENSITIES for lam in TIES_LAMBDAS], score, how)
    return {UNIFORM: uniform, TASK_WISE: task_wise, TIES: ties}


def _key(value: float | None) -> float:
    return -1.0 if value is None else value


def _best(candidates: list[Settings], score: Callable[[Settings], float | None], how: str) -> BaselineChoice:
    tried = [(c, score(c)) for c in candidates]
    best = max(range(len(tried)), key=lambda i: (_key(tried[i][1]), -i))  # the earliest of equals
    return BaselineChoice(tried[best][0], how, tried[best][1], tried)


def _coordinate_pass(start: BaselineChoice, score: Callable[[Settings], float | None], how: str) -> BaselineChoice:
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


def settings_recipe(base_model: str, models: Sequence[str], settings: Mapping[str, Any]) -> Recipe:
    """Merge settings as a recipe over `base_model` and `models` (the refs a LiveMerger is keyed by): for a caller
    without the Merge tab's recipe builder (python -m evaluation compare, the benches)."""
    data: dict[str, Any] = {
        "merge_method": settings["method"], "base_model": base_model, "dtype": "float32",
        "models": [{"model": ref, "parameters": {"weight": float(w)}} for ref, w in zip(models, settings["weights"],
                                                                                        strict=True)],
    }
    if settings.get("params"):
        data["parameters"] = dict(settings["params"])
    return Recipe.from_dict(data)


def learning_selector(evaluator: Evaluator, inputs: Mapping[str, Sequence[Any]]) -> Evaluator:
    """An evaluator of the learning split (learning_tasks) sharing `evaluator`'s experts, template and answer cache."""
    tokenizer = next((e.tokenizer for e in evaluator.experts.values()), None)
    return Evaluator(learning_tasks(inputs, evaluator.tasks, tokenizer), evaluator.experts,
                     batch_size=evaluator.batch_size, template=evaluator.template, answer_cache=evaluator.answer_cache)


def compare_fairly(evaluator: Evaluator, method: str, learned: Callable[[], Weights],
                   merge: Callable[[Settings], Weights], n_sources: int, inputs: Mapping[str, Sequence[Any]] | None
                   ) -> tuple[dict[str, EvalResult], dict[str, BaselineChoice]]:
    """The comparison the Learn tab and `python -m evaluation compare` show: baselines chosen on the learning split
    `inputs` (fixed ones, said so, when there is none), then everything scored on the evaluator's tasks."""
    if inputs and any(inputs.values()):
        choices = choose_baselines(learning_selector(evaluator, inputs), merge, n_sources)
    else:
        choices = fixed_baselines(n_sources)
    return compare_with_baselines(evaluator, method, learned, merge, choices), choices


def compare_with_baselines(evaluator: Evaluator, method: str, learned: Callable[[], Weights],
                           merge: Callable[[Settings], Weights], choices: Mapping[str, BaselineChoice]
                           ) -> dict[str, EvalResult]:
    """The learned merge (`learned()` returns its weights), then each baseline at its chosen settings
    (`merge(settings)` merges the sources), scored on the evaluator's tasks; keyed by learned_label(method) and the
    baselines' names, in that order."""
    baselines = {name: partial(merge, choice.settings) for name, choice in choices.items()}
    return compare_merges(evaluator, {learned_label(method): learned, **baselines})


def comparison_error(evaluator: Evaluator, method: str, scores: Mapping[str, EvalResult]) -> ScoredSetError:
    """The scored set's sampling error of a comparison (compare_fairly's scores, all from `evaluator`): each merge's
    ± on its mean accuracy and agreement, and the learned merge minus each baseline, example by example, with its
    95 % interval."""
    return scored_set_error({name: evaluator.outcomes(result) for name, result in scores.items()},
                            learned_label(method))


def why_not_better(method: str, error: ScoredSetError) -> str | None:
    """The reason shown unless the learned merge's agreement is established higher than task arithmetic's (its
    paired interval above 0); a higher mean whose interval reaches 0 is not a win. None when it is established
    higher, or when there is no agreement to compare (no experts' answers)."""
    difference = error.paired.get(REFERENCE, {}).get("agreement")
    if difference is None or direction(difference) == "higher":
        return None
    return WHY_NOT[method]
