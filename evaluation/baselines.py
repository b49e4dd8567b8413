"""A learned merge beside the merges it should beat, chosen fairly: which baselines, how their settings are picked on
the learning split (never on the scored set), all scored on the same tasks by one evaluator, and why a learned
merge that does not beat task arithmetic may not.

Baselines (`choose_baselines`): uniform and task-wise task arithmetic and TIES, each picked by mean agreement with
the experts on the learning split (the unlabeled inputs the learned merge was given, as a task set: learning_tasks);
the candidates and the rule are merging.learned.baselines' (shared with the glue-bert preset's report), described
there. Ties in the selection score keep the earlier candidate, so the choice is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch

from evaluation.agreement import EvalResult, Evaluator, compare_merges
from evaluation.scoring import token_limit
from evaluation.stats import ScoredSetError, direction, scored_set_error
from evaluation.tasks import TaskSet, tasks_from_records
from merging.errors import TaskSetError
from merging.learned.baselines import (  # noqa: F401 - TASK_WISE, TIES, the grids, settings_recipe: re-exported
    TASK_WISE,
    TIES,
    TIES_DENSITIES,
    TIES_LAMBDAS,
    UNIFORM,
    UNIFORM_GRID,
    BaselineChoice,
    Settings,
    choose,
    settings_recipe,
    task_arithmetic_settings,
    ties_settings,
)

REFERENCE = UNIFORM  # the baseline a learned merge is expected to beat
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


def learned_label(method: str) -> str:
    """The learned merge's name in the comparison, e.g. "learned (samerging)"."""
    return f"learned ({method})"


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
                record["answer_type"] = like.answer_type
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

    return choose(score, n_sources)


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
