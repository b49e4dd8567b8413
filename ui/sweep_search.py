"""The Evaluate tab's runs on the shared runner (evaluation.runner): where sweeps and searches run (this process, or
Ray workers on this machine), the sweep's heatmap filling in as points finish with an estimate of the time left, and
the Search mode (Optuna over the sources' weights and the density, judged on held-out examples beside the best point
of a 5 × 5 weight × density grid). The search's proposals become the session's last sweep, so **Use this point**
makes its best recipe the current merge, and its best recipe downloads as mergekit YAML."""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from evaluation.axes import TRIAL, Axis
from evaluation.charts import search_figure  # noqa: F401 - the panel draws it from here
from evaluation.runner import RAY_MISSING, InProcessRunner, RayRunner, Scorer, WorkerSpec, ray_available
from evaluation.search import HELD_OUT, SEARCH, Candidate, SearchSpace, run_search, split_tasks
from evaluation.sweep import SweepPoint, SweepResult, parse_grid
from merging.errors import MergeLabError
from merging.settings import MergeSettings
from ui.hosting import HostConfig
from ui.session import Session
from ui.workspace import build_recipe, recorded_recipe, require_models

RUNNER_CHOICES = ("this process", "Ray workers (this machine)")
RAY_WORKERS = 2
SAMPLER_CHOICES = (("TPE (Optuna's default)", "tpe"), ("CMA-ES", "cmaes"))
DEFAULT_BUDGET = 15
COMPARISON_GRID = "0.2:1.0:0.2"  # the homework's 5 × 5 weight × density grid
_RAY: dict[str, Any] = {}  # one RayRunner kept for the page (its workers hold the models between runs)
_RAY_LOCK = threading.Lock()


def runner_note() -> str:
    """What the page says under the runner choice: nothing where Ray is installed, else that it sweeps in process."""
    return "" if ray_available() else RAY_MISSING


def page_runner(session: Session, config: HostConfig, choice: str | None, splits: dict[str, Any],
                evaluators: Callable[[], dict[str, Any]]) -> Any:
    """In process on the session's live merger (`evaluators()` gives one Evaluator per split), or the page's Ray
    workers for these models and task splits (started once, kept while the models and tasks stay the same)."""
    if choice != RUNNER_CHOICES[1]:
        return InProcessRunner(Scorer(session.live, evaluators()))
    if not ray_available():
        raise MergeLabError(RAY_MISSING + " Choose 'this process'.")
    if config.hosted:
        raise MergeLabError("On a shared server sweeps run in this process: choose 'this process'.")
    spec = WorkerSpec(base=session.base.label, paths={m.label: str(m.path) for m in [session.base, *session.sources]},
                      expert_names={s.label: s.label for s in session.sources}, splits=splits,
                      template=session.base.label, threads=1)
    key = repr((spec.paths, {name: (t.source, len(t)) for name, t in splits.items()}))
    with _RAY_LOCK:
        if key not in _RAY:
            for old in _RAY.values():
                old.close()
            _RAY.clear()
            _RAY[key] = RayRunner(spec, workers=RAY_WORKERS)
        return _RAY[key]


def close_page_runners() -> None:
    """End the page's Ray workers (a test's cleanup; the process's exit does it otherwise)."""
    with _RAY_LOCK:
        for runner in _RAY.values():
            runner.close()
        _RAY.clear()


def streamed(run: Callable[[Callable[[Any], None]], Any]) -> Iterator[tuple[str, Any]]:
    """Run `run(partial)` in a thread and yield ("partial", result so far) as `partial` is called, then
    ("done", final result); an error in the run is raised here."""
    updates: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            updates.put(("done", run(lambda result: updates.put(("partial", result)))))
        except BaseException as error:  # noqa: BLE001 - handed to the page's thread, raised there
            updates.put(("error", error))

    context = contextvars.copy_context()  # gradio's progress bar reads the request's context variables
    threading.Thread(target=context.run, args=(work,), daemon=True, name="mergelab-sweep").start()
    while True:
        kind, value = updates.get()
        if kind == "error":
            raise value
        yield kind, value
        if kind == "done":
            return


def starting_text(previous: SweepResult | None, total: int, workers: int) -> str:
    """Before a sweep's first point: an estimate from the session's last sweep's measured points, where it has
    one (the first point of this sweep is measured and the estimate renewed as soon as it is done)."""
    if previous is None or not previous.points:
        return f"Starting {total} points: the first one is measured, then the time left is shown here."
    per_point = sum(p.seconds for p in previous.points) / len(previous.points)
    return (f"Starting {total} points: about {-(-total // max(1, workers)) * per_point:.0f} s at the last sweep's "
            f"{per_point:.1f} s a point (renewed once this sweep's first point is measured).")


def progress_text(result: SweepResult, total: int, workers: int) -> str:
    """"3 of 25 points (Ray, 2 workers); measured 4.1 s a point: about 90 s left" while a sweep runs."""
    done = len(result.points)
    if not done:
        return f"Scoring the experts, then {total} points ({result.where})…"
    per_point = sum(p.seconds for p in result.points) / done
    left = -(-(total - done) // max(1, workers)) * per_point
    return (f"{done} of {total} points ({result.where}); measured {per_point:.1f} s a point: about {left:.0f} s "
            "left. The heatmap fills in as points finish.")


# --- search -------------------------------------------------------------------------------------------------------

@dataclass
class SearchControls:
    sampler: gr.Dropdown
    budget: gr.Slider
    compare: gr.Checkbox
    run: gr.Button
    summary: gr.Markdown
    chart: gr.Plot
    files: gr.File


def build_search() -> SearchControls:
    """The Search mode's controls (under the sweep, sharing its method, metric, examples and runner)."""
    gr.Markdown("### Search\nOptuna proposes each source's weight and the density of the sweep's method; each "
                "proposal is merged and scored on half of every task's examples, and the best is then scored on the "
                "other half, which the search never saw, beside the best point of the 5 × 5 weight × density grid "
                "(chosen on the same half). **Use this point** keeps a proposal; the best downloads as mergekit YAML.")
    with gr.Row():
        sampler = gr.Dropdown(list(SAMPLER_CHOICES), value="tpe", label="Sampler", elem_id="search-sampler")
        budget = gr.Slider(2, 60, value=DEFAULT_BUDGET, step=1, label="Budget (proposals scored)",
                           elem_id="search-budget")
        compare = gr.Checkbox(value=True, label="Compare with the 5 × 5 grid (25 more points)",
                              elem_id="search-compare")
    run = gr.Button("Run search", variant="primary", elem_id="search-run")
    summary = gr.Markdown(elem_id="search-summary")
    chart = gr.Plot(label="Search", elem_id="search-chart")
    files = gr.File(label="Search results (JSON, best recipe as mergekit YAML)", file_count="multiple",
                    interactive=False, elem_id="search-files")
    return SearchControls(sampler, budget, compare, run, summary, chart, files)


def search(session: Session, config: HostConfig, base: dict[str, Any], tasks: Any, evaluators: Callable, *,
           budget: int, sampler: str, metric: str, compare: bool, runner_choice: str | None,
           progress: Callable[[float, str], Any] | None = None) -> tuple[Any, SweepResult]:
    """Search the sources' weights and the method's density from the settings `base`; returns the SearchResult
    and its proposals as a SweepResult (points with settings, for **Use this point**)."""
    require_models(session)
    method, labels = base["method"], session.labels
    space = SearchSpace(method, tuple(labels), shared_density=True)
    splits = split_tasks(tasks, 0.5, seed=int(base.get("seed") or 0))

    def build(values: dict[str, float]) -> tuple[Any, Any, dict[str, Any]]:
        settings = space.settings(base, labels, values)
        recipe = build_recipe(session, MergeSettings.from_dict(settings))
        return recipe, recorded_recipe(session, recipe), settings

    grid = _comparison_grid(base, labels, space, build) if compare else []
    runner = page_runner(session, config, runner_choice, splits, lambda: evaluators(splits))
    session.cancel.clear()
    result = run_search(runner, space, build, budget=int(budget), sampler=sampler, seed=int(base.get("seed") or 0),
                        metric=metric, grid=grid, progress=progress, should_stop=session.cancel.is_set)
    return result, as_sweep(result, tasks.task_names)


def _comparison_grid(base: dict[str, Any], labels: list[str], space: SearchSpace, build: Callable
                     ) -> list[Candidate]:
    """The 5 × 5 shared weight × density grid (one column for a method without a density), as candidates."""
    values = parse_grid(COMPARISON_GRID, "weight")
    densities = values if space.density_name else [None]
    out = []
    for weight in values:
        for density in densities:
            merged, recorded, settings = build({f"weight:{label}:0": weight for label in labels}
                                               | ({"density:*:0": density} if density is not None else {}))
            out.append(Candidate(f"grid weight={weight:g} density={density}", merged, recorded, settings,
                                 {"weight": weight, "density": density}))
    return out


def as_sweep(result: Any, tasks: list[str]) -> SweepResult:
    """The search's proposals as sweep points (row: the trial number), best first by the search split's metric."""
    trials = Axis(TRIAL, tuple(float(number) for number in range(len(result.trials))))
    sweep = SweepResult.over(trials, None, metric=result.metric, methods=[result.method], tasks=tasks,
                             where=result.where, seconds=result.seconds)
    for number, trial in zip(trials.values, result.trials, strict=True):
        sweep.points.append(SweepPoint(method=result.method, row=number, column=None,
                                       recipe=trial.recorded.to_dict(), summary=trial.summary,
                                       scores=trial.scores, answers={}, seconds=trial.seconds,
                                       settings=trial.settings, worker=trial.worker, incident=trial.incident,
                                       axes=sweep.axes))
    return sweep


def search_markdown(result: Any) -> str:
    """The best proposal beside the grid's best: each on the search half and on the held-out half."""
    def pct(value: float | None) -> str:
        return "–" if value is None else f"{value:.0%}"

    lines = [(f"**{result.sampler.upper()} search** of {result.method}: {len(result.trials)} proposals in "
              f"{result.seconds:.0f} s ({result.where}); {result.metric}:"), "",
             f"| | {SEARCH.replace('_', ' ')} half | {HELD_OUT.replace('_', ' ')} half |", "|---|---|---|"]
    for name, candidate in (("best proposal", result.best), (f"best of the {len(result.grid)}-point grid",
                                                               result.grid_best)):
        if candidate is not None:
            lines.append(f"| {name} | {pct(candidate.search_value)} | {pct(candidate.held_out_value)} |")
    lines += [f"\nNot scored: {line}" for line in result.failed]
    if result.best is not None:
        lines.append("\n**Use this point** (above) with the first entry keeps the best proposal as the current merge.")
    return "\n".join(lines)
