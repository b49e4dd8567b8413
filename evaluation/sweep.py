"""(weight × density [× method]) sweeps: every grid point is merged in memory (LiveMerger, task vectors cached
once) and scored by loading the merged state dict into the same model instance (Evaluator.score_state); expert
outputs are computed once for the whole sweep.

The weight axis sets every merged model's `weight`; the density axis sets the method's kept fraction (`density`, or
SCE's `select_topk`: the parameters declared with role "kept_fraction"). A method without such a parameter collapses that axis to one point (value None in the results). Methods with a
`normalize` parameter get `normalize: false` unless the recipe sets it: normalising divides equal weights out, so
the weight axis would change nothing; without it the weight scales the (trimmed, elected) task vectors.
Settings sweeps (the page's) vary one or two of the Merge panel's settings instead, each an `evaluation.axes.Axis`
(every source's weight, one source's, λ, the density, another parameter). A point holds its values on the result's
two axes (`row`, `column`), and the results name each value by its axis's key ("weight", "lambda", "density", ...).
Results: a table, the best point by a chosen metric, and a results file (JSON with each point's recipe, per-task
scores and each question's extracted answer, plus a CSV beside it and the best recipe as YAML).
"""

from __future__ import annotations

import copy
import csv
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import InitVar, asdict, dataclass, field
from pathlib import Path
from typing import Any

from evaluation.agreement import METRICS, Evaluator
from evaluation.answer_cache import AnswerCache
from evaluation.axes import WEIGHT, Axis, axis_choices
from evaluation.errors import SweepError
from evaluation.runner import (
    InProcessRunner,
    PointJob,
    PointOutcome,
    Scorer,
    estimate_seconds,
    expert_name,
    read_state,
)
from evaluation.stats import best_indices
from evaluation.tasks import TaskSet, tasks_for_experts
from inference.loading import load_model
from merging.live import LiveMerger
from merging.methods.registry import Method, get_method
from merging.recipe import Recipe, load_recipe
from merging.settings import MergeSettings

Progress = Callable[[float, str], Any]  # progress(fraction, description): gr.Progress fits
GRID_ROLES = ("weight", "kept_fraction")  # the roles of the parameters a (weight × density) grid sets
DENSITY = "density"  # the key of a weight × density grid's column axis (the method's kept fraction, whatever its name)
GRID_AXES = (WEIGHT, DENSITY)


def _grid_param_names(*methods: Method) -> set[str]:
    return {p.name for method in methods for p in method.params if p.role in GRID_ROLES}


MAX_GRID_POINTS = 10_000  # points on one axis from the command line; the page allows far fewer (ui/evaluate_panel.py)
MAX_GRID_SPEC_CHARS = 10_000  # a grid written out by hand is far shorter
MIN_GRID_STEP = 1e-9  # finer steps repeat values once points are rounded to 10 decimals


def _grid_number(text: str, what: str, field: str, spec: str) -> float:
    """One finite number of a grid spec; `field` names it in the message (start, stop, step, value)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        form = "start:stop:step, e.g. 0.2:1.0:0.2" if field in ("start", "stop", "step") else \
            "numbers separated by commas, or start:stop:step"
        raise SweepError(f"{what} {field} {_short(text)!r} in {_short(spec)!r} is not a number: write {form}.") \
            from None
    if not math.isfinite(value):
        raise SweepError(f"{what} {field} in {_short(spec)!r} must be a finite number, not {text.strip()}.")
    return value


def _short(text: Any, limit: int = 40) -> str:
    """`text` cut to `limit` characters, so that a message never repeats a huge input."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "…"


def _range_bounds(spec: str, what: str) -> tuple[float, float, float, int]:
    """(start, stop, step, point count) of "start:stop:step", counted by arithmetic (no list is built)."""
    parts = spec.split(":")
    if len(parts) != 3:
        raise SweepError(f"{what} range {_short(spec)!r} must be start:stop:step, e.g. 0.2:1.0:0.2.")
    start, stop, step = (_grid_number(p, what, f, spec) for p, f in zip(parts, ("start", "stop", "step"), strict=True))
    if step <= 0:
        raise SweepError(f"{what} range {_short(spec)!r}: step must be positive (it is {step:g}).")
    if step < MIN_GRID_STEP:
        raise SweepError(f"{what} range {_short(spec)!r}: step {step:g} is finer than {MIN_GRID_STEP:g}.")
    if stop < start:
        raise SweepError(f"{what} range {_short(spec)!r}: stop ({stop:g}) must be at least start ({start:g}).")
    intervals = (stop - start) / step  # inf when stop - start overflows
    count = math.floor(intervals + 1e-9) + 1 if math.isfinite(intervals) and intervals < 2**53 else math.inf
    return start, stop, step, count


def grid_size(spec: str | Sequence[float], what: str = "value") -> float:
    """How many points `spec` holds (see parse_grid), found by arithmetic before anything is built, so that
    "0:1e308:1" costs nothing to refuse; math.inf for a range too long to count. Raises SweepError for a spec
    that parse_grid would refuse for its form (not for its size)."""
    if not isinstance(spec, str | Sequence):
        raise SweepError(f"{what} grid must be text such as 0.2:1.0:0.2 or a list of numbers, not "
                         f"{type(spec).__name__}.")
    if not isinstance(spec, str):
        return len(spec)
    if len(spec) > MAX_GRID_SPEC_CHARS:
        raise SweepError(f"{what} grid is {len(spec)} characters long: write at most {MAX_GRID_SPEC_CHARS}, "
                         "e.g. start:stop:step.")
    if ":" in spec:
        return _range_bounds(spec, what)[3]
    return len([v for v in spec.split(",") if v.strip()])


def check_grid_size(count: float, what: str, max_points: int | None) -> None:
    """Refuse a grid of more than `max_points` points (None: no limit), naming the axis."""
    if max_points is not None and count > max_points:
        shown = "more points than can be counted" if math.isinf(count) else f"{int(count):,} points"
        raise SweepError(f"{what} grid has {shown}; at most {max_points:,} are allowed: use a coarser step or a "
                         "shorter range.")


def parse_grid(spec: str | Sequence[float], what: str = "value", *,
               max_points: int | None = MAX_GRID_POINTS) -> list[float]:
    """"0.2:1.0:0.2" (start:stop:step, stop included), "0.3,0.5,0.9", "0.5", or a list of numbers.
    Every value must be finite; a spec of more than `max_points` points (None: no limit) is refused from its
    count (grid_size) before any list is built. `what` names the axis in messages."""
    what = what or "value"
    check_grid_size(grid_size(spec, what), what, max_points)
    if not isinstance(spec, str):
        values = [_grid_number(v, what, "value", str(list(spec)))
                  if isinstance(v, str) else _finite_value(v, what) for v in spec]
    elif ":" in spec:
        start, _, step, count = _range_bounds(spec, what)
        values = [round(start + i * step, 10) for i in range(int(count))]
    else:
        values = [_grid_number(v, what, "value", spec) for v in spec.split(",") if v.strip()]
    if not values:
        raise SweepError(f"No {what}s given: write e.g. 0.2:1.0:0.2 or 0.3,0.5.")
    return values


def parse_grids(rows: str | Sequence[float], columns: str | Sequence[float] | None, *, max_points: int | None,
                row_name: str = "row", column_name: str = "column") -> tuple[list[float], list[float]]:
    """(row values, column values) of a two-axis grid of at most `max_points` points in all (None: no limit),
    counted by arithmetic before either list is built; `columns` None is one column (an empty list back)."""
    row_count = grid_size(rows, row_name)
    column_count = grid_size(columns, column_name) if columns is not None else 1
    check_grid_size(row_count, row_name, max_points)  # one axis too big: say which
    check_grid_size(column_count, column_name, max_points)
    if max_points is not None and row_count * max(column_count, 1) > max_points:
        raise SweepError(f"The grid has {int(row_count):,} × {int(column_count):,} points; at most {max_points:,} are allowed: use coarser steps or "
                         "shorter ranges" + (", or the command line for big grids." if max_points < 1000 else "."))
    row_values = parse_grid(rows, row_name, max_points=max_points)
    column_values = parse_grid(columns, column_name, max_points=max_points) if columns is not None else []
    return row_values, column_values


def _finite_value(value: Any, what: str) -> float:
    """A number of a grid given as a list: finite, and a real number (not a bool, None or a nested list)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SweepError(f"{what} values must be numbers, not {type(value).__name__} ({_short(value)}).")
    if not math.isfinite(value):
        raise SweepError(f"{what} values must be finite numbers, not {value}.")
    return float(value)


@dataclass
class SweepPoint:
    """One scored point: its values on the sweep's two axes (`row`, `column`; `axes` holds their keys, as the
    result's do), the recipe scored, its scores and each question's answer."""

    method: str
    row: float | None
    column: float | None
    recipe: dict[str, Any]
    summary: dict[str, float | None]
    scores: dict[str, dict[str, Any]]
    answers: dict[str, list[str | None]]
    seconds: float
    settings: dict[str, Any] | None = None  # the Merge panel's settings of this point (settings sweeps)
    worker: str = "in process"  # where it was scored (evaluation.runner)
    attempts: int = 1  # 2 when its first worker died and a fresh one scored it
    incident: str | None = None  # what happened on the way (a worker that died), None when nothing did
    axes: tuple[str, str | None] = GRID_AXES  # the keys of the axes `row` and `column` lie on

    def value(self, metric: str) -> float | None:
        task, _, name = metric.rpartition(".")
        return self.scores[task][name] if task else self.summary[name]

    def at(self, key: str) -> float | None:
        """The point's value on the axis named `key` ("weight", "lambda", ...); None when its sweep has none."""
        return self.row if key == self.axes[0] else self.column if key == self.axes[1] else None

    @property
    def weight(self) -> float | None:
        """The every-source weight, when the sweep varies it (a weight × density grid does); else None."""
        return self.at(WEIGHT)

    @property
    def density(self) -> float | None:
        """The density, when the sweep varies it; else None."""
        return self.at(DENSITY)


@dataclass
class SweepResult:
    """A sweep's points over its two axes, `rows` and `columns` (an `Axis` each: the setting and the values asked
    for; `columns` None when one setting was varied). Build one with `SweepResult.over(rows, columns, ...)`; the
    plain constructor takes the values as `weights` and `densities` and the keys as `axes` (a weight × density grid,
    the first kind, by default)."""

    metric: str
    methods: list[str]
    weights: InitVar[Sequence[float | None]]  # the rows' values
    densities: InitVar[Sequence[float | None]]  # the columns' values
    tasks: list[str]
    points: list[SweepPoint] = field(default_factory=list)
    questions: dict[str, list[str]] = field(default_factory=dict)
    expected: dict[str, list[Any]] = field(default_factory=dict)
    seconds: float = 0.0
    axes: tuple[str, str | None] = GRID_AXES  # the keys of `rows` and `columns`
    where: str = "in process"  # the runner: in process, or Ray with N workers
    failed: list[dict[str, Any]] = field(default_factory=list)  # points not scored (their worker died twice)
    rows: Axis = field(init=False)
    columns: Axis | None = field(init=False)

    def __post_init__(self, weights: Sequence[float | None], densities: Sequence[float | None]) -> None:
        self.rows = Axis(self.axes[0], tuple(weights))
        self.columns = Axis(self.axes[1], tuple(densities)) if self.axes[1] else None

    @classmethod
    def over(cls, rows: Axis, columns: Axis | None, **fields: Any) -> SweepResult:
        """A result over these axes (the other fields as the constructor takes them)."""
        return cls(weights=rows.values, densities=columns.values if columns else (),
                   axes=(rows.key, columns.key if columns else None), **fields)

    @property
    def best(self) -> SweepPoint | None:
        """The point with the highest metric (the first one among equals); None when no point has a value. What is
        shown as best is `best_points` (which says when no point may be called best)."""
        scored = [p for p in self.points if p.value(self.metric) is not None]
        return max(scored, key=lambda p: p.value(self.metric)) if scored else None

    def best_points(self) -> tuple[list[SweepPoint], str | None]:
        """The points to show as best (every one when several tie for the top), or none and why: every scored point
        scores the same (0 % everywhere, say) or the top is 0 (evaluation.stats.best_indices)."""
        indices, note = best_indices([p.value(self.metric) for p in self.points])
        return [self.points[i] for i in indices], note

    def by_key(self, row: float | None, column: float | None) -> dict[str, float | None]:
        """A point's row and column values under their axes' keys ("weight", "density" for weight × density)."""
        return {self.rows.key: row} | ({self.columns.key: column} if self.columns else {})

    def point_dict(self, p: SweepPoint) -> dict[str, Any]:
        """A point as the results file holds it: the method, its values under the axes' keys, then the rest."""
        data = asdict(p)
        row, column = data.pop("row"), data.pop("column")
        del data["axes"]
        return {"method": data.pop("method"), **self.by_key(row, column), **data}

    def table(self) -> list[dict[str, Any]]:
        """One row per point: method, the axes' values, the metric, the mean metrics, per-task metrics."""
        rows = []
        for p in self.points:
            row = {"method": p.method, **self.by_key(p.row, p.column), self.metric: p.value(self.metric)}
            row.update({f"mean_{m}": p.summary[m] for m in METRICS})
            for task in self.tasks:
                row.update({f"{task}.{m}": p.scores[task][m] for m in METRICS})
            row["seconds"] = round(p.seconds, 3)
            rows.append(row)
        return rows

    def task_table(self) -> list[dict[str, Any]]:
        """The grid's table for a report: the swept settings, then one column per task holding the metric's measure
        (accuracy for "accuracy" or "japanese_math.accuracy"), then the mean over tasks."""
        measure = self.metric.rpartition(".")[2]
        rows = []
        for p in self.points:
            row = {"method": p.method, **self.by_key(p.row, p.column)}
            row.update({task: p.scores[task][measure] for task in self.tasks})
            row[f"mean {measure}"] = p.summary[measure]
            rows.append(row)
        return rows

    def grid(self, method: str | None = None, metric: str | None = None) -> tuple[list, list, list[list]]:
        """(row values, column values, z[row][column]) of one method, for a heatmap; None where a point is
        missing (weights, densities, z[weight][density] for a weight × density grid)."""
        method = method or self.methods[0]
        metric = metric or self.metric
        points = [p for p in self.points if p.method == method]
        rows = sorted({p.row for p in points}, key=lambda v: (v is None, v or 0))
        columns = sorted({p.column for p in points}, key=lambda v: (v is None, v or 0))
        lookup = {(p.row, p.column): p.value(metric) for p in points}
        return rows, columns, [[lookup.get((r, c)) for c in columns] for r in rows]

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        columns = self.columns
        return {
            "metric": self.metric,
            "grid": {"methods": self.methods, "axes": list(self.axes), "rows": list(self.rows.values),
                     "columns": list(columns.values) if columns else []},
            "tasks": self.tasks,
            "seconds": round(self.seconds, 3),
            "best": self.point_dict(best) if best else None,
            "best_note": self.best_points()[1],  # why no point is shown as best (a tie across the grid, or 0)
            "points": [self.point_dict(p) for p in self.points],
            "questions": self.questions,
            "expected": self.expected,
        }

    def write(self, path: str | Path) -> dict[str, Path]:
        """The JSON results file at `path`, the table as CSV beside it, and the best recipe as YAML beside it."""
        json_path = Path(path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")
        csv_path = json_path.with_suffix(".csv")
        rows = self.table()
        with csv_path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["method"])
            writer.writeheader()
            writer.writerows(rows)
        written = {"json": json_path, "csv": csv_path}
        tasks_path = json_path.with_name(json_path.stem + ".tasks.csv")
        task_rows = self.task_table()
        with tasks_path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(task_rows[0]) if task_rows else ["method"])
            writer.writeheader()
            writer.writerows(task_rows)
        written["tasks_csv"] = tasks_path
        if self.best is not None:
            yaml_path = json_path.with_name(json_path.stem + ".best.yaml")
            yaml_path.write_text(Recipe.from_dict(self.best.recipe).to_yaml(), encoding="utf-8")
            written["yaml"] = yaml_path
        return written


def point_recipe(template: Recipe, method: str, weight: float | None, density: float | None) -> Recipe:
    """The template recipe with `method`, and every merged model's weight and density set (where the method has
    them); other settings are kept. Methods that ignore the base (linear) mix only the listed models; `normalize`
    is turned off unless the template sets it (see the module docstring)."""
    data = copy.deepcopy(template.to_dict())
    data["merge_method"] = method
    spec = get_method(method)
    density_param = spec.by_role("kept_fraction")
    weight_param = spec.weight
    grid_names = _grid_param_names(get_method(template.merge_method), spec)
    listed = [entry["model"] for entry in data["models"]]
    if spec.base == "ignored" and data.get("base_model") not in listed:
        data.pop("base_model", None)  # linear & co. mix the listed experts; the base would be one more input
    shared = data.setdefault("parameters", {})
    for name in grid_names:  # the grid decides these; stale ones could fail validation
        shared.pop(name, None)
    for entry in data["models"]:
        params = entry.setdefault("parameters", {})
        for name in grid_names:
            params.pop(name, None)
        if entry["model"] == data.get("base_model") and spec.base != "ignored":
            continue
        if weight_param is not None and weight is not None:
            params[weight_param.name] = weight
        if density_param is not None and density_param.scope == "model" and density is not None:
            params[density_param.name] = density
    if density_param is not None and density_param.scope == "global" and density is not None:
        shared[density_param.name] = density
    if spec.param("normalize") is not None and "normalize" not in template.parameters and weight is not None:
        # With normalize on, equal weights divide out (w·Στ / Σw): the weight axis would change nothing.
        shared["normalize"] = False
    for entry in data["models"]:
        if not entry["parameters"]:
            del entry["parameters"]
    if not shared:
        del data["parameters"]
    return Recipe.from_dict(data)


def weight_density_pairs(method: str, weights: list[float], densities: list[float]
                         ) -> list[tuple[float | None, float | None]]:
    """The (weight, density) points of a weight × density grid for `method`: an axis the method lacks is one point
    (None)."""
    spec = get_method(method)
    method_weights = weights if spec.weight is not None else [None]
    method_densities = densities if spec.by_role("kept_fraction") is not None else [None]
    return [(w, d) for w in method_weights for d in method_densities]


def run_sweep(
    template: Recipe,
    merger: LiveMerger | None,
    evaluator: Evaluator | None,
    *,
    weights: Sequence[float],
    densities: Sequence[float],
    methods: Sequence[str] | None = None,
    metric: str = "accuracy",
    seed: int = 0,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    runner: Any = None,
    partial: Callable[[SweepResult], Any] | None = None,
) -> SweepResult:
    """Merge and score every grid point. `metric`: agreement | accuracy | normalized_accuracy (means over tasks) or
    <task>.<metric>. `should_stop()` returning True ends the sweep early with the points done so far. `runner`
    (evaluation.runner: in process or Ray) scores the points; None: in process on `merger` and `evaluator`.
    `partial(result)` sees the result after each point (a heatmap filling in)."""
    runner = runner or InProcessRunner(Scorer(merger, {"all": evaluator}))
    tasks = runner.tasks()
    methods = list(methods or [template.merge_method])
    _check_metric(metric, tasks)
    plan = [(m, w, d) for m in methods for w, d in weight_density_pairs(m, list(weights), list(densities))]
    if not plan:
        raise SweepError("The sweep grid is empty: give at least one weight and one density.")
    recipes = [point_recipe(template, m, w, d) for m, w, d in plan]  # fail on a bad method before any work
    result = SweepResult.over(
        Axis(WEIGHT, tuple(weights)), Axis(DENSITY, tuple(densities)), metric=metric, methods=methods,
        tasks=tasks.task_names, where=runner.where,
        questions={t.name: t.inputs for t in tasks.tasks.values()},
        expected={t.name: t.answers for t in tasks.tasks.values()},
    )
    jobs = [PointJob(label=f"{method} weight={weight} density={density}", recipe=recipe, seed=seed,
                 point={"method": method, "row": weight, "column": density, "recipe": recipe.to_dict()})
            for (method, weight, density), recipe in zip(plan, recipes)]
    return _score_points(result, jobs, runner, progress, should_stop, partial)


# --- settings sweeps: each point is the Merge panel's settings with one or two of them changed --------------------
#
# The caller turns settings into a recipe with the same function the Merge panel uses, so a point kept from the
# sweep merges to exactly what was scored. Each axis is an evaluation.axes.Axis, named by its key: "weight" (every
# source's weight), "weight:<source>" (one source's weight, the others as the settings say) or the name of one of
# the method's numeric parameters (evaluation.axes.axis_choices).

GridPoint = tuple[float | None, float | None, dict[str, Any]]  # (row value, column value, settings as /merge takes)


def settings_grid(settings: MergeSettings | Mapping[str, Any], sources: Sequence[str], rows: str | None,
                  row_values: Sequence[float], columns: str | None = None, column_values: Sequence[float] = ()
                  ) -> list[GridPoint]:
    """(row value, column value, settings) for every grid point, the settings as /merge takes them; an absent axis
    is one point (value None). `rows` and `columns` are axis keys (evaluation.axes.axis_choices)."""
    base = settings if isinstance(settings, MergeSettings) else MergeSettings.from_dict(dict(settings))
    if rows is not None and rows == columns:
        raise SweepError(f"Rows and columns both vary {rows!r}: choose two different settings (or no columns).")
    choices = axis_choices(base.method, sources)
    for key in (rows, columns):
        if key is not None and key not in choices:
            raise SweepError(f"{base.method} has no setting {key!r} to vary: choose one of "
                             f"{', '.join(choices) or '(none)'}.")
    points = []
    for r in (list(row_values) if rows else [None]):
        for c in (list(column_values) if columns else [None]):
            point = Axis(rows).apply(base, r, sources) if rows else base
            point = Axis(columns).apply(point, c, sources) if columns else point
            points.append((r, c, point.to_dict()))
    return points


def run_settings_sweep(
    points: Sequence[GridPoint],
    build: Callable[[Mapping[str, Any]], tuple[Recipe, Recipe]],
    merger: LiveMerger | None,
    evaluator: Evaluator | None,
    *,
    axes: tuple[str | None, str | None],
    metric: str = "accuracy",
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    runner: Any = None,
    partial: Callable[[SweepResult], Any] | None = None,
) -> SweepResult:
    """Merge and score each point's settings. `axes`: the keys of the points' row and column values (as given to
    settings_grid). `build(settings)` gives (recipe the merger runs, recipe to record): the second names models as
    an export does, so the kept point's YAML is what was scored. `runner`, `partial`: as run_sweep's."""
    runner = runner or InProcessRunner(Scorer(merger, {"all": evaluator}))
    tasks = runner.tasks()
    _check_metric(metric, tasks)
    if not points:
        raise SweepError("The sweep grid is empty: give at least one value per axis.")
    recipes = [build(p[2]) for p in points]  # fail on a bad setting before any work
    methods = list(dict.fromkeys(p[2]["method"] for p in points))
    rows = Axis(axes[0] or "", tuple(dict.fromkeys(p[0] for p in points)))
    columns = Axis(axes[1], tuple(dict.fromkeys(p[1] for p in points))) if axes[1] else None
    result = SweepResult.over(
        rows, columns, metric=metric, methods=methods, tasks=tasks.task_names, where=runner.where,
        questions={t.name: t.inputs for t in tasks.tasks.values()},
        expected={t.name: t.answers for t in tasks.tasks.values()},
    )
    jobs = [PointJob(label=f"{axes[0]}={row} {axes[1]}={column}", recipe=merged_recipe,
                 seed=int(settings.get("seed") or 0),
                 point={"method": settings["method"], "row": row, "column": column, "recipe": recorded.to_dict(),
                        "settings": copy.deepcopy(dict(settings))})
            for (row, column, settings), (merged_recipe, recorded) in zip(points, recipes)]
    return _score_points(result, jobs, runner, progress, should_stop, partial)


def _score_points(result: SweepResult, jobs: Sequence[PointJob], runner: Any, progress: Progress | None,
                  should_stop: Callable[[], bool] | None,
                  partial: Callable[[SweepResult], Any] | None) -> SweepResult:
    """Score the jobs on `runner` into `result.points` (in grid order at the end), reporting progress with an
    estimate of the time left from the points measured so far; failed points go to `result.failed`."""
    started = time.perf_counter()
    if progress:
        progress(0.0, f"Answers of the experts ({runner.where})")
    order: dict[int, int] = {}

    def on_point(outcome: PointOutcome, done: int, total: int) -> None:
        if outcome.failed:
            point = dict(outcome.job.point)
            values = result.by_key(point.pop("row"), point.pop("column"))
            result.failed.append({**point, **values, "label": outcome.job.label, "incident": outcome.incident})
        else:
            result.points.append(SweepPoint(
                **outcome.job.point, summary=outcome.summary, scores=outcome.scores, answers=outcome.answers,
                seconds=outcome.seconds, worker=outcome.worker, attempts=outcome.attempts, incident=outcome.incident,
                axes=result.axes))
            order[id(result.points[-1])] = outcome.index
        result.seconds = time.perf_counter() - started
        if partial is not None:
            partial(result)
        if progress:
            value = outcome.value(result.metric)
            shown = "failed" if outcome.failed else "–" if value is None else f"{value:.2f}"
            progress(done / total, f"{done}/{total}: {outcome.job.label} {result.metric}={shown}"
                     f"{remaining_text(result.points, total - done, runner.workers)}")

    runner.run(jobs, on_point, should_stop)
    result.points.sort(key=lambda p: order[id(p)])
    result.seconds = time.perf_counter() - started
    return result


def remaining_text(points: Sequence[SweepPoint], left: int, workers: int) -> str:
    """ "; about 40 s left" from the points' measured times (empty when nothing is left or measured)."""
    if left <= 0 or not points:
        return ""
    per_point = sum(p.seconds for p in points) / len(points)
    return f"; about {estimate_seconds(per_point, left, workers):.0f} s left"


def _check_metric(metric: str, tasks: TaskSet) -> None:
    task, _, name = metric.rpartition(".")
    if name not in METRICS:
        raise SweepError(f"Unknown metric {metric!r}: use one of {', '.join(METRICS)}, or <task>.<metric>.")
    if task and task not in tasks.tasks:
        raise SweepError(f"Metric {metric!r} names task {task!r}, which is not in the task set "
                         f"({', '.join(tasks.task_names)}).")


# --- from a recipe file: load the models once, then sweep -------------------------------------------------------


@dataclass
class SweepSetup:
    """Everything a sweep over one recipe's models needs, loaded once (reuse it for several sweeps)."""

    template: Recipe
    merger: LiveMerger
    evaluator: Evaluator


def prepare_sweep(recipe: Recipe | str | Path, tasks: TaskSet, *, experts: Mapping[str, str] | None = None,
                  batch_size: int | None = None, device: str = "cpu", dtype: str | None = None,
                  answer_cache: AnswerCache | None = None) -> SweepSetup:
    """Load the recipe's base and models (names from folder names, or `experts` name -> model ref), keep only the
    tasks of those experts and composite tasks, and build the merger and evaluator. The experts (and the scoring
    instance) live on `device`; task vectors stay on the CPU in float32."""
    # Not validated as written: the grid sets weights and densities; each point is validated when merged.
    template = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, validate=False)
    if not template.base_model:
        raise SweepError("The recipe has no base_model: a sweep merges task vectors, so name the base model.")
    refs = [m.model for m in template.models if m.model != template.base_model]
    names = {ref: expert_name(ref) for ref in refs}
    if experts:
        by_ref = {str(v): k for k, v in experts.items()}
        names = {ref: by_ref.get(ref, name) for ref, name in names.items()}
    base_state, num_layers = read_state(template.base_model)
    states = {ref: read_state(ref)[0] for ref in refs}
    merger = LiveMerger(base_state, states, num_layers)
    loaded = {names[ref]: load_model(ref, device=device, dtype=dtype) for ref in refs}
    task_set = tasks_for_experts(tasks, loaded, whose="the recipe's models")
    template_model = None
    if any(not t.is_classification for t in task_set.tasks.values()) and all(m.kind == "lm" for m in loaded.values()):
        template_model = next(iter(loaded.values()))
    evaluator = Evaluator(task_set, loaded, batch_size=batch_size, template=template_model, answer_cache=answer_cache)
    return SweepSetup(template=template, merger=merger, evaluator=evaluator)
