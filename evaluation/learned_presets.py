"""A learned merge of the glue-bert preset beside its baselines, with the scored set's 95 % intervals:

    python -m evaluation compare RUN_DIR --preset glue-bert [--preset-models DIR] [--preset-data DIR] --out FILE.json

RUN_DIR is what `python -m merging learn --preset glue-bert --out RUN_DIR` wrote. The baselines (uniform and task-wise
task arithmetic, TIES) are chosen by merging.learned.presets.compare_with_baselines on the inputs the merge was
learned from (learned.json's learning split), and every merge is scored on the same GLUE validation examples, so the
table is the one `python -m evaluation compare` prints for task sets (evaluation.charts.comparison_markdown): each
mean ± the scored set's binomial error, and the learned merge minus each baseline, example by example, with its
paired 95 % interval (evaluation.stats.scored_set_error). The learning inputs' draw is not varied here (one run).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.agreement import EvalResult, TaskScore
from evaluation.baselines import learned_label
from evaluation.stats import ScoredSetError, scored_set_error
from merging.errors import MergeLabError
from merging.learned import presets
from merging.learned.baselines import BaselineChoice
from merging.learned.recipe_io import INFO_FILE, load_coefficients


@dataclass
class PresetComparison:
    """compare_preset's result, in the shapes evaluation.charts.comparison_markdown and the compare JSON take."""

    method: str
    scores: dict[str, EvalResult]  # learned_label(method) first, then each baseline
    choices: dict[str, BaselineChoice]
    error: ScoredSetError


def compare_preset(learned_dir: str | Path, preset: str, *, models_dir: str | Path | None = None,
                   data_dir: str | Path | None = None, eval_per_task: int = 1000, allow_pickle: bool = False,
                   device: str = "cpu", batch_size: int = 32) -> PresetComparison:
    """Score the learned merge in `learned_dir` and its baselines on the preset's validation examples."""
    method, inputs = _learned_summary(Path(learned_dir))
    tasks, names, coefficients = load_coefficients(learned_dir)
    base, experts = presets.resolve_models(preset, models_dir, allow_pickle=allow_pickle)
    if list(experts) != tasks or set(inputs) != set(tasks):
        raise MergeLabError(f"{learned_dir} was learned for tasks {tasks}, not for the {preset} preset's "
                            f"{list(experts)}: learn it with `python -m merging learn --preset {preset}`")
    per_task = min(len(v) for v in inputs.values())
    _, scored = presets.load_data(preset, data_dir, per_task, eval_per_task)
    comparison = presets.compare_with_baselines(base, experts, coefficients, names, inputs, scored, device=device,
                                                batch_size=batch_size)
    reports = {learned_label(method): comparison["learned"],
               **{name: b["tasks"] for name, b in comparison["baselines"].items()}}
    outcomes = {name: _outcomes(report) for name, report in reports.items()}
    return PresetComparison(method, {name: _eval_result(report) for name, report in reports.items()},
                            {name: b["choice"] for name, b in comparison["baselines"].items()},
                            scored_set_error(outcomes, learned_label(method)))


def _learned_summary(folder: Path) -> tuple[str, dict[str, list[Any]]]:
    """(method, the learning split: every unlabeled input the merge was given, per task) from learned.json."""
    info = folder / INFO_FILE
    try:
        learned = json.loads(info.read_text(encoding="utf-8"))
        method = learned["method"]
        inputs = {task: [tuple(x) if isinstance(x, list) else x for x in rows]  # JSON turned pairs into lists
                  for task, rows in learned["learning_inputs"].items()}
    except OSError:
        raise MergeLabError(f"{folder} holds no readable {INFO_FILE}: point at a folder written by "
                            "`python -m merging learn --preset glue-bert --out DIR`") from None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise MergeLabError(f"{info} is not readable as a learned merge's summary ({error!r}): learn the merge "
                            "again with `python -m merging learn --preset glue-bert --out DIR`") from None
    if not inputs or not all(inputs.values()):
        raise MergeLabError(f"{info} records no learning inputs, so the baselines cannot be chosen as the learned "
                            "merge was: learn it again with this version")
    return method, inputs


def _eval_result(report: dict[str, dict]) -> EvalResult:
    """presets' per-task report as an EvalResult: each task's expert is its teacher (the task's own head)."""
    scores = {task: TaskScore(task=task, expert=task, examples=r["examples"], agreement=r["agreement"],
                              accuracy=r["accuracy"], expert_accuracy=r["teacher_accuracy"],
                              normalized_accuracy=r["accuracy"] / r["teacher_accuracy"] if r["teacher_accuracy"]
                              else None)
              for task, r in report.items()}
    return EvalResult(scores, answers={}, outputs={})


def _outcomes(report: dict[str, dict]) -> dict[str, dict[str, list[bool]]]:
    """metric -> task -> each scored example's outcome, as evaluation.stats.scored_set_error takes them."""
    return {metric: {task: r["outcomes"][metric] for task, r in report.items()} for metric in ("accuracy", "agreement")}
