"""A merge search: Optuna proposes per-model weights and densities (optionally per layer range, as mergekit
gradients), the runner (evaluation.runner: in process or Ray) merges and scores each proposal on a search split of
the task set, and the best proposal is then scored on a held-out split the search never saw, beside the best point
of a weight × density grid chosen on the same search split.

Samplers: Optuna's TPE and its CMA-ES sampler (the `cmaes` package), both seeded, so the same seed on the same
runner proposes the same recipes. Proposals are asked for in batches of the runner's worker count (Optuna's ask/tell),
so two Ray workers score two proposals at a time.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluation.axes import kept_fraction
from evaluation.errors import SweepError
from evaluation.runner import PointJob, PointOutcome
from evaluation.sweep import point_recipe, weight_density_pairs
from evaluation.tasks import TaskSet
from merging.export import mergekit_export
from merging.methods.registry import get_method
from merging.recipe import Recipe

SAMPLERS = ("tpe", "cmaes")
SEARCH, HELD_OUT = "search", "held_out"
WEIGHT_RANGE = (0.0, 1.0)
DENSITY_RANGE = (0.1, 1.0)
MAX_LAYER_RANGES = 8  # gradient points per parameter: more only spreads a small budget thinner
Build = Callable[[Mapping[str, float]], tuple[Recipe, Recipe, dict[str, Any] | None]]


def split_tasks(tasks: TaskSet, held_out: float = 0.5, seed: int = 0) -> dict[str, TaskSet]:
    """{"search": ..., "held_out": ...}: each task's examples shuffled by `seed` and cut, a `held_out` share of
    them (at least one, and at least one left) held out."""
    if not 0 < held_out < 1:
        raise SweepError(f"The held-out share must be between 0 and 1 (exclusive), not {held_out}.")
    search, kept_out = [], []
    for task in tasks.tasks.values():
        examples = list(task.examples)
        if len(examples) < 2:
            raise SweepError(f"Task {task.name!r} has {len(examples)} example(s): a search needs at least 2 per task "
                             "(one to search on, one held out); use more examples per task.")
        random.Random(f"{seed}:{task.name}").shuffle(examples)
        cut = min(len(examples) - 1, max(1, round(len(examples) * held_out)))
        kept_out += examples[:cut]
        search += examples[cut:]
    return {SEARCH: TaskSet(search, source=f"{tasks.source} (search split)"),
            HELD_OUT: TaskSet(kept_out, source=f"{tasks.source} (held-out split)")}


@dataclass(frozen=True)
class SearchSpace:
    """What a search varies: each of `models`' weight, and its density (or one shared density, or SCE's global
    select_topk), each a scalar or, with `layer_ranges` > 1, a gradient of that many points over the layers."""

    method: str
    models: tuple[str, ...]
    weight_range: tuple[float, float] = WEIGHT_RANGE
    density_range: tuple[float, float] = DENSITY_RANGE
    layer_ranges: int = 1
    shared_density: bool = False

    def __post_init__(self) -> None:
        spec = get_method(self.method)
        if spec.weight is None and self.density_name is None:
            raise SweepError(f"{self.method} has neither a weight nor a density to search: pick e.g. ties.")
        if not 1 <= self.layer_ranges <= MAX_LAYER_RANGES:
            raise SweepError(f"Layer ranges must be 1 to {MAX_LAYER_RANGES}, not {self.layer_ranges}.")

    @property
    def density_name(self) -> str | None:
        param = kept_fraction(self.method)
        return param.name if param is not None else None

    def dimensions(self) -> dict[str, tuple[float, float]]:
        """Every searched number by name ("weight:MODEL:0", "density:MODEL:0", "density:*:0") with its range."""
        spec, names = get_method(self.method), {}
        density = self.density_name
        per_model_density = density and spec.param(density).scope == "model" and not self.shared_density
        for k in range(self.layer_ranges):
            for model in self.models:
                if spec.weight is not None:
                    names[f"weight:{model}:{k}"] = self.weight_range
                if per_model_density:
                    names[f"density:{model}:{k}"] = self.density_range
            if density and not per_model_density:
                names[f"density:*:{k}"] = self.density_range
        return names

    def suggest(self, trial: Any) -> dict[str, float]:
        return {name: trial.suggest_float(name, low, high) for name, (low, high) in self.dimensions().items()}

    def value(self, values: Mapping[str, float], what: str, model: str) -> float | list[float] | None:
        """A parameter as a recipe writes it: a scalar, or a gradient list over the layer ranges."""
        points = [values.get(f"{what}:{model}:{k}") for k in range(self.layer_ranges)]
        if points[0] is None:
            return None
        points = [round(float(v), 4) for v in points]
        return points[0] if self.layer_ranges == 1 else points

    def recipe(self, template: Recipe, values: Mapping[str, float]) -> Recipe:
        """The template with this method and the searched values (normalize off, as in sweeps)."""
        data = point_recipe(template, self.method, 1.0, 0.5).to_dict()
        density = self.density_name
        weight_param = get_method(self.method).weight
        shared = self.value(values, "density", "*")
        for entry in data["models"]:
            if entry["model"] not in self.models:
                continue
            params = entry.setdefault("parameters", {})
            if weight_param is not None:
                params.pop(weight_param.name, None)
            if density:
                params.pop(density, None)
            weight = self.value(values, "weight", entry["model"])
            if weight is not None:
                params[weight_param.name] = weight
            own = self.value(values, "density", entry["model"])
            if own is not None:
                params[density] = own
            if not params:
                del entry["parameters"]
        if shared is not None:
            scope = get_method(self.method).param(density).scope
            if scope == "global":
                data.setdefault("parameters", {})[density] = shared
            else:
                for entry in data["models"]:
                    if entry["model"] in self.models:
                        entry.setdefault("parameters", {})[density] = shared
        return Recipe.from_dict(data)

    def settings(self, base: Mapping[str, Any], sources: Sequence[str], values: Mapping[str, float]
                 ) -> dict[str, Any]:
        """The Merge panel's settings (one weight per source, one shared density) for scalar values."""
        out = {**dict(base), "method": self.method, "params": dict(base.get("params") or {})}
        out["weights"] = [float(self.value(values, "weight", s) or 0.0) for s in sources]
        density = self.value(values, "density", "*")
        if density is not None:
            out["params"][self.density_name] = density
        if get_method(self.method).param("normalize") is not None:
            out["params"]["normalize"] = False  # as in sweeps: the weights are the searched scale
        return out


def make_sampler(name: str, seed: int, budget: int) -> Any:
    """Optuna's seeded TPE (a third of the budget random first) or CMA-ES sampler."""
    import optuna  # deferred: optuna is only needed by searches

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, budget // 3)))
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise SweepError(f"Unknown sampler {name!r}: use one of {', '.join(SAMPLERS)}.")


@dataclass
class Candidate:
    """A scored recipe: what the runner merged, what is recorded and exported, the page's settings (or None)."""

    label: str
    merged: Recipe
    recorded: Recipe
    settings: dict[str, Any] | None
    params: dict[str, float] = field(default_factory=dict)
    search_value: float | None = None
    summary: dict[str, float | None] | None = None  # the search split's mean metrics and per-task scores
    scores: dict[str, dict[str, Any]] | None = None
    held_out_value: float | None = None
    held_out_scores: dict[str, Any] | None = None
    seconds: float = 0.0
    worker: str = ""
    incident: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "params": self.params, "recipe": self.recorded.to_dict(),
                "settings": self.settings, "search_value": self.search_value, "search_scores": self.scores,
                "held_out_value": self.held_out_value,
                "held_out_scores": self.held_out_scores, "seconds": round(self.seconds, 3), "worker": self.worker,
                "incident": self.incident}


@dataclass
class SearchResult:
    method: str
    sampler: str
    seed: int
    budget: int
    metric: str
    where: str
    trials: list[Candidate] = field(default_factory=list)
    grid: list[Candidate] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def best(self) -> Candidate | None:
        return _best(self.trials)

    @property
    def grid_best(self) -> Candidate | None:
        return _best(self.grid)

    def to_dict(self) -> dict[str, Any]:
        best, grid_best = self.best, self.grid_best
        return {"method": self.method, "sampler": self.sampler, "seed": self.seed, "budget": self.budget,
                "metric": self.metric, "where": self.where, "seconds": round(self.seconds, 3),
                "best": best.to_dict() if best else None, "grid_best": grid_best.to_dict() if grid_best else None,
                "trials": [t.to_dict() for t in self.trials], "grid_points": len(self.grid), "failed": self.failed}

    def write(self, path: str | Path) -> dict[str, Path]:
        """The JSON results at `path` and the best recipe beside it, as mergekit YAML where mergekit runs it."""
        json_path = Path(path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")
        written = {"json": json_path}
        if self.best is not None:
            export = mergekit_export(self.best.recorded)
            yaml_path = json_path.with_name(f"{json_path.stem}.best.{export.filename}")
            yaml_path.write_text(export.text, encoding="utf-8")
            written["yaml"] = yaml_path
        return written


def _best(candidates: Sequence[Candidate]) -> Candidate | None:
    scored = [c for c in candidates if c.search_value is not None]
    return max(scored, key=lambda c: c.search_value) if scored else None


def run_search(runner: Any, space: SearchSpace, build: Build, *, budget: int, sampler: str = "tpe", seed: int = 0,
               metric: str = "accuracy", grid: Sequence[Candidate] = (),
               progress: Callable[[float, str], Any] | None = None, should_stop: Callable[[], bool] | None = None
               ) -> SearchResult:
    """Search `budget` proposals on the runner's "search" split, then score the best one, and the best of `grid`
    (candidates scored on the same split), on its "held_out" split. `build(values)` gives (recipe to merge,
    recipe to record, settings or None)."""
    import optuna  # deferred: optuna is only needed by searches

    if budget < 1:
        raise SweepError(f"The budget must be at least one evaluation, not {budget}.")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(sampler, seed, budget))
    result = SearchResult(space.method, sampler, seed, budget, metric, runner.where)
    started = time.perf_counter()
    total = budget + len(grid) + 2
    while len(result.trials) + len(result.failed) < budget and not (should_stop and should_stop()):
        size = min(runner.workers, budget - len(result.trials) - len(result.failed))
        asked = [study.ask() for _ in range(size)]
        batch = []
        for trial in asked:
            values = space.suggest(trial)
            merged, recorded, settings = build(values)
            batch.append(Candidate(f"trial {trial.number}", merged, recorded, settings, dict(values)))
        outcomes = _score(runner, batch, SEARCH, seed, metric, should_stop)
        if should_stop and should_stop():
            result.trials += [c for c in batch if c.search_value is not None]  # stopped: the rest were never run
            break
        for trial, candidate in zip(asked, batch, strict=True):
            if candidate.search_value is None:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                result.failed.append(f"{candidate.label}: {candidate.incident or 'not scored'}")
            else:
                study.tell(trial, candidate.search_value)
                result.trials.append(candidate)
        if progress and outcomes:
            best = result.best
            progress(len(result.trials) / total, f"{len(result.trials)}/{budget} proposals; best on the search "
                     f"split {metric}={best.search_value:.3f}" if best else "no proposal scored yet")
    if grid and not (should_stop and should_stop()):
        if progress:
            progress((budget + 1) / total, f"The {len(grid)}-point grid on the search split")
        result.grid = list(grid)
        _score(runner, result.grid, SEARCH, seed, metric, should_stop)
    finalists = [c for c in (result.best, result.grid_best) if c is not None]
    if finalists and not (should_stop and should_stop()):
        if progress:
            progress((total - 1) / total, "The best recipe (and the grid's best) on the held-out split")
        _score(runner, finalists, HELD_OUT, seed, metric, should_stop, held_out=True)
    result.seconds = time.perf_counter() - started
    return result


def _score(runner: Any, candidates: Sequence[Candidate], split: str, seed: int, metric: str,
           should_stop: Callable[[], bool] | None, *, held_out: bool = False) -> list[PointOutcome]:
    """Score candidates on a split, filling in their search (or held-out) value."""
    jobs = [PointJob(label=c.label, recipe=c.merged, seed=seed, split=split) for c in candidates]
    outcomes = runner.run(jobs, None, should_stop)
    for outcome in outcomes:
        candidate = candidates[outcome.index]
        candidate.incident = outcome.incident or candidate.incident
        if held_out:
            candidate.held_out_value = outcome.value(metric)
            candidate.held_out_scores = outcome.scores
        else:
            candidate.search_value = outcome.value(metric)
            candidate.summary, candidate.scores = outcome.summary, outcome.scores
            candidate.seconds, candidate.worker = outcome.seconds, outcome.worker
    return outcomes


def recipe_build(template: Recipe, space: SearchSpace) -> Build:
    """For a recipe file's models (the runner's keys are the recipe's model strings): merged = recorded."""

    def build(values: Mapping[str, float]) -> tuple[Recipe, Recipe, None]:
        recipe = space.recipe(template, values)
        return recipe, recipe, None

    return build


def recipe_grid(template: Recipe, method: str, weights: Sequence[float], densities: Sequence[float]
                ) -> list[Candidate]:
    """A weight × density grid of a recipe file's models, as candidates (for the comparison)."""
    out = []  # the grid's points as sweeps make them (a method without a density has one column)
    for weight, density in weight_density_pairs(method, list(weights), list(densities)):
        recipe = point_recipe(template, method, weight, density)
        out.append(Candidate(f"grid weight={weight} density={density}", recipe, recipe, None,
                             {"weight": weight, "density": density}))
    return out
