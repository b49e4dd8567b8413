"""Evaluate panel: per-task agreement of the merged model with each source expert (and accuracy where answers are
known) as bar charts; a (weight × density) sweep as a heatmap with the best point marked; results as JSON/CSV and the
recipe as YAML to download."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from evaluation import load_tasks
from evaluation.agreement import Evaluator
from evaluation.axes import Axis, axis_choices, axis_range, default_axes
from evaluation.charts import agreement_figure as chart
from evaluation.charts import sweep_heatmap
from evaluation.results import write_results
from evaluation.sweep import grid_size, parse_grids, run_settings_sweep, settings_grid
from evaluation.tasks import tasks_for_experts
from inference import LoadedModel
from merging.errors import MergeLabError, TaskSetError
from merging.methods import get_method
from merging.recipe import Recipe
from merging.settings import MergeSettings
from ui import sweep_search
from ui.feedback import guarded, in_place_error
from ui.fields import number_field
from ui.hosting import HostConfig
from ui.merge_panel import merge_if_none, methods, settings_summary, start_value
from ui.resources import on_gpu, session_tokenizer, shared_model
from ui.session import Session, session_downloads
from ui.sweep_search import RUNNER_CHOICES, page_runner, runner_note
from ui.workspace import (
    _read_all,
    build_recipe,
    current_merge,
    has_own_control,
    merged_state,
    recorded_recipe,
    require_models,
)

DEFAULT_PER_TASK = 20


def task_set_for(session: Session, uploaded: str | None, per_task: int | None):
    """The uploaded task file, else the zoo family's; only tasks whose expert is among the chosen sources (or that
    have none, like the composite japanese_math)."""
    if uploaded:
        tasks = load_tasks(uploaded)
    elif session.tasks_path is not None and session.tasks_path.is_file():
        tasks = load_tasks(session.tasks_path)
    else:
        raise TaskSetError("Upload a task file (JSONL, one example a line: {\"task\", \"prompt\" or \"text\", "
                           "\"answer\" or \"label\", \"expert\"}) to evaluate these models.")
    return tasks_for_experts(tasks, session.labels).limited(per_task)


def evaluator_for(session: Session, tasks: Any, key: tuple) -> Any:
    """One Evaluator per (task set, sources) and session: the experts' answers are computed once and reused."""
    cache = session.evaluators
    if key not in cache:
        experts, template = session_experts(session)
        cache.clear()  # keep one: the experts' predictions for the current choice only
        cache[key] = Evaluator(tasks, experts, template=template)
    return cache[key]


def session_experts(session: Session) -> tuple[dict[str, LoadedModel], LoadedModel | None]:
    """The sources as experts by label (the shared models, this session's tokenizers), and the base as the model
    merged weights are loaded into (language models)."""
    experts = {}
    for source in session.sources:
        shared = shared_model(source.path)
        experts[source.label] = LoadedModel(shared.model, session_tokenizer(session, source.path), shared.kind,
                                            source.path)
    template = None
    if session.kind == "lm":
        base = shared_model(session.base.path)
        template = LoadedModel(base.model, session_tokenizer(session, session.base.path), base.kind,
                               session.base.path)
    return experts, template


def score_merged(session: Session, evaluator: Any) -> Any:
    """Score the session's current merge (its record): the in-memory weights, or its merged folder."""
    record = current_merge(session, "evaluate the result")
    if record.in_memory:
        return evaluator.score_state(merged_state(session))
    if session.kind == "classifier":
        return evaluator.score_state(_read_all(record.folder))
    loaded = shared_model(record.folder)  # keyed by the folder's content: a re-merge is a new entry
    return evaluator.score(LoadedModel(loaded.model, session_tokenizer(session, record.folder), "lm"))


def evaluate(session: Session, config: HostConfig, uploaded: str | None = None,
             per_task: int | None = DEFAULT_PER_TASK) -> dict[str, Any]:
    """/evaluate: the result as a dict (summary, per-task scores, and the recipe and merge version scored); also
    kept in the session for downloads."""
    require_models(session)
    record = current_merge(session, "evaluate the result")
    per_task = int(per_task) if per_task else None
    tasks = task_set_for(session, uploaded, per_task)
    evaluator = evaluator_for(session, tasks, (tasks.source, per_task, tuple(session.labels), session.base.ref))
    result = score_merged(session, evaluator)
    with session.lock:  # a merge made while scoring is not what was scored: keep no result for it
        if session.merge is record:
            session.evaluation = result
    merge = {"version": record.version, "mode": record.mode, "dtype": record.dtype}
    return {"recipe": recorded_recipe(session, record.recipe).to_dict(), "merge": merge, **result.to_dict()}


SWEEP_METRICS = ("accuracy", "agreement", "normalized_accuracy")  # means over tasks; "<task>.accuracy" one task
MAX_SWEEP_POINTS = 64  # a bigger grid belongs on the command line (python -m evaluation sweep)
NO_AXIS = "(none)"


def sweep_methods() -> list[str]:
    """Every method a sweep can vary something of (model_stock has nothing to vary)."""
    return [m.name for m in methods() if axis_choices(m.name, ["a", "b"])]


def sweep_base_settings(session: Session, method: str) -> dict[str, Any]:
    """The settings a sweep of `method` starts from: the current merge's when it used the same method, else the
    method's declared values as the Merge panel would show them (weights and a density carried over)."""
    current = session.merge_settings
    if current is not None and current.method == method:
        return current.to_dict()
    spec = get_method(method)
    params = {p.name: start_value(p) for p in spec.params
              if has_own_control(p) and start_value(p) is not None}
    fraction = spec.by_role("kept_fraction")
    carried = get_method(current.method).by_role("kept_fraction") if current is not None else None
    if fraction is not None and carried is not None and current.params.get(carried.name) is not None:
        params[fraction.name] = current.params[carried.name]  # density ↔ select_topk: one setting, two names
    n = len(session.sources)
    weights = []
    if spec.weight is not None:
        weights = list(current.weights) if current is not None and len(current.weights) == n else [0.5] * n
    return MergeSettings(method, weights, params, current.seed if current else 0).to_dict()


def default_grid(method: str, axis: str | None) -> str:
    """Five points across an axis's declared range (weights: 0.2 to 1)."""
    if not axis or axis == NO_AXIS:
        return ""
    if Axis(axis).sets_weights:
        return "0.2:1.0:0.2"
    low, high = axis_range(method, axis)
    step = (high - low) / 5
    if step >= 1:
        step = round(step)
    start = max(low, step) if low >= 0 else low
    return f"{start:g}:{high:g}:{step:g}"


def sweep_axes(session: Session | None, method: str) -> tuple[list[str], str | None, str | None]:
    """(choices, rows, columns) for the sweep's axis dropdowns."""
    labels = session.labels if session is not None and session.sources else ["model 1", "model 2"]
    params = sweep_base_settings(session, method)["params"] if session is not None and session.sources else {}
    rows, columns = default_axes(method, params, labels)
    return axis_choices(method, labels), rows, columns


def sweep(session: Session, config: HostConfig, method: str = "ties", rows_grid: str = "0.2:1.0:0.2",
          columns_grid: str = "0.2:1.0:0.2", metric: str = "accuracy", per_task: int | None = DEFAULT_PER_TASK,
          uploaded: str | None = None, progress: Any = None, rows: str | None = None,
          columns: str | None = None, runner: str | None = None, partial: Any = None) -> Any:
    """/sweep: merge and score every grid point in memory; returns the SweepResult. Each point is the Merge panel's
    settings (see sweep_base_settings) with the `rows` and `columns` settings set (default: the method's
    default_axes); every point's recipe is built by the same function as Merge's. `runner`: one of
    sweep_search.RUNNER_CHOICES (default this process); `partial(result)` sees each point as it finishes."""
    require_live(session, "A sweep")
    check_metric(metric)
    _, default_rows, default_columns = sweep_axes(session, method)
    rows = default_rows if rows is None else rows
    columns = default_columns if columns is None else (None if columns in (NO_AXIS, "") else columns)
    if rows is None:
        raise MergeLabError(f"{method} has no setting to sweep: pick another method.")
    # Counted before anything is built: "0:1e308:1" is refused from arithmetic, not from a list of its points.
    row_values, column_values = parse_grids(rows_grid, columns_grid if columns else None,
                                            max_points=MAX_SWEEP_POINTS, row_name=rows, column_name=columns or "")
    base = sweep_base_settings(session, method)
    points = settings_grid(base, session.labels, rows, row_values, columns, column_values)
    per_task = int(per_task) if per_task else None
    tasks = task_set_for(session, uploaded, per_task)
    evaluator = evaluator_for(session, tasks, (tasks.source, per_task, tuple(session.labels), session.base.ref))

    def build(settings: dict) -> tuple[Any, Any]:
        # Built once, merged by label (the LiveMerger's keys); recorded as Export writes it (folders / Hub ids).
        recipe = build_recipe(session, MergeSettings.from_dict(settings))
        return recipe, recorded_recipe(session, recipe)

    run_on = page_runner(session, config, runner, {"all": tasks}, lambda: {"all": evaluator})
    session.cancel.clear()
    step = (lambda fraction, text: progress(fraction, desc=text)) if progress else None
    result = run_settings_sweep(points, build, session.live, evaluator, axes=(rows, columns), metric=metric,
                                progress=step, should_stop=session.cancel.is_set, runner=run_on, partial=partial)
    session.sweep = result
    return result


MAX_COUNTED_POINTS = 2**53  # beyond this a count is not a number of points anyone can run


def grid_points(rows_grid: str, columns_grid: str | None) -> int:
    """How many points a sweep's grids hold (0 where one does not parse: the sweep then says what is wrong)."""
    try:
        count = grid_size(rows_grid) * (grid_size(columns_grid) if columns_grid else 1)
    except MergeLabError:
        return 0
    return int(count) if count < MAX_COUNTED_POINTS else 0  # grid_size says inf for "0:1e308:1": refused later


def require_live(session: Session, what: str) -> None:
    """Sweeps and searches merge in memory: refuse (saying why) when live merging is off."""
    require_models(session)
    if session.live is None:
        reason = session.live_plan.reason if session.live_plan is not None else "the models are not read yet"
        raise MergeLabError(f"{what} merges in memory, and live merging is off ({reason}): run it with "
                            "`python -m evaluation sweep` (or search) on a machine with more memory.")


def check_metric(metric: str) -> None:
    """A mean over tasks (SWEEP_METRICS) or one task's, "<task>.<metric>" (the task is checked against the set)."""
    if metric not in SWEEP_METRICS and metric.rpartition(".")[2] not in SWEEP_METRICS:
        raise MergeLabError(f"Metric must be one of {', '.join(SWEEP_METRICS)} (means over tasks), or one task's, "
                            "e.g. japanese_math.accuracy.")


def metric_choices(session: Session | None) -> list[str]:
    """The sweep's metrics: the means, then each task's accuracy and agreement (tasks of the current models)."""
    try:
        names = task_set_for(session, None, None).task_names if session is not None and session.sources else []
    except MergeLabError:
        names = []
    return [*SWEEP_METRICS, *(f"{task}.{m}" for task in names for m in ("accuracy", "agreement"))]


def search(session: Session, config: HostConfig, method: str = "ties", metric: str = "accuracy",
           per_task: int | None = DEFAULT_PER_TASK, uploaded: str | None = None, sampler: str = "tpe",
           budget: int = sweep_search.DEFAULT_BUDGET, compare: bool = True, runner: str | None = None,
           progress: Any = None) -> Any:
    """/search: Optuna over the sources' weights and the method's density (from sweep_base_settings), scored on
    half of every task's examples and judged on the other half beside the 5 × 5 grid's best; returns the
    SearchResult. Its proposals become the session's last sweep (Use this point keeps one)."""
    require_live(session, "A search")
    check_metric(metric)
    tasks = task_set_for(session, uploaded, int(per_task) if per_task else None)

    def evaluators(splits: dict[str, Any]) -> dict[str, Any]:
        experts, template = session_experts(session)
        return {name: Evaluator(split, experts, template=template) for name, split in splits.items()}

    step = (lambda fraction, text: progress(fraction, desc=text)) if progress else None
    result, proposals = sweep_search.search(session, config, sweep_base_settings(session, method), tasks, evaluators,
                                            budget=budget, sampler=sampler, metric=metric, compare=compare,
                                            runner_choice=runner, progress=step)
    session.sweep = proposals
    return result


def point_text(result: Any, point: Any) -> str:
    """'λ 1 · density 0.5 → accuracy 65%' for a point of a sweep."""
    parts = [f"{result.rows.title} {point.row:g}"]
    if result.columns is not None:
        parts.append(f"{result.columns.title} {point.column:g}")
    value = point.value(result.metric)
    return f"{' · '.join(parts)} → {result.metric} {'–' if value is None else f'{value:.0%}'}"


def point_choices(result: Any) -> list[tuple[str, int]]:
    """(label, index) of every point, the best first and starred (each of several that tie for the top; none when
    every point scores the same or the top is 0)."""
    best = {id(p) for p in result.best_points()[0]}
    order = sorted(range(len(result.points)), key=lambda i: (id(result.points[i]) not in best, i))
    return [(("★ best: " if id(result.points[i]) in best else "") + point_text(result, result.points[i]), i)
            for i in order]


def best_text(result: Any) -> str:
    """The sweep's verdict: its best point (saying so when several tie for it), or why no point is best."""
    best, note = result.best_points()
    done = f"({len(result.points)} points in {result.seconds:.1f} s)"
    if note is not None:
        return (f"**No best point**: {note} {done}. **Use this point** still puts the chosen point into Merge, Chat "
                "and Export.")
    if not best:
        return "No point was scored."
    tied = f" ({len(best)} points tie for it; the first is shown)" if len(best) > 1 else ""
    return (f"**Best**: {best[0].method} at {point_text(result, best[0])}{tied} {done}. **Use this point** puts it "
            "into Merge, Chat and Export.")


def sweep_outputs(result: Any, folder: Path) -> tuple[Any, str, list[str]]:
    """The sweep's heatmap, its verdict and its files written into `folder` (the session's sweep downloads)."""
    text = best_text(result)
    written = result.write(folder / "sweep.json")
    return sweep_heatmap(result), text, [str(p) for p in written.values()]


def kept_point(session: Session, index: int | None) -> Any:
    """The sweep point to keep (default: the best); its settings become the current merge's."""
    result = session.sweep
    if result is None or not result.points:
        raise MergeLabError("Run a sweep first; then keep its best point (or another) for Merge, Chat and Export.")
    point = result.best if index is None or index == "" else None
    if point is None:
        try:
            point = result.points[int(index)]
        except (ValueError, IndexError, TypeError):
            raise MergeLabError(f"No point {index!r} in the last sweep: pick one from the list.") from None
    if point.settings is None:
        raise MergeLabError("This sweep's points have no Merge settings (it came from a recipe file): run it here.")
    return point


# --- presentation ----------------------------------------------------------------------------------------------------

def agreement_figure(result: dict[str, Any]):
    """Grouped bars: per task, the merged model's agreement with each source expert (accuracy where known)."""
    return chart(result)


def summary_markdown(result: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "–" if v is None else f"{v:.0%}"

    # Japanese replies only (as Sakana counts MGSM-JA): a column of its own when a task asks for it
    japanese = any(s.get("japanese_accuracy") is not None for s in result["tasks"].values())
    lines = ["| task | own expert | agreement with it | accuracy |" + (" accuracy, Japanese replies |" if japanese else "")
             + " expert's accuracy | examples |", "|---|---|---|---|" + ("---|" if japanese else "") + "---|---|"]
    for name, s in result["tasks"].items():
        ja = f" {pct(s.get('japanese_accuracy'))} |" if japanese else ""
        reference = reference_cell(s["expert"], s["expert_accuracy"], s.get("accuracy_by_source") or {})
        lines.append(f"| {name} | {s['expert'] or '(none)'} | {pct(s['agreement'])} | {pct(s['accuracy'])} |{ja} "
                     f"{reference} | {s['examples']} |")
    summary = result["summary"]
    lines.append(f"\n**Mean** agreement {pct(summary['agreement'])} · accuracy {pct(summary['accuracy'])} · "
                 f"normalized accuracy {pct(summary['normalized_accuracy'])}")
    return "\n".join(lines)


def reference_cell(expert: str | None, expert_accuracy: float | None, accuracy_by_source: dict[str, float]) -> str:
    """What the merge is measured against on a task: its own expert's accuracy, or, for a task no expert owns (a
    composite such as japanese_math), the best single source there, named (every source tied for best is named;
    none when all score 0 %)."""
    if expert is not None:
        return "–" if expert_accuracy is None else f"{expert_accuracy:.0%}"
    if expert_accuracy is None:
        return "no expert of its own (no source scored)"
    if expert_accuracy == 0:  # naming every source as "best" at 0 % would read like a finding
        return "no expert of its own; no single source answers any (all 0%)"
    names = [source for source, value in accuracy_by_source.items() if value == expert_accuracy]
    return f"no expert of its own; best single source: {' / '.join(names)} {expert_accuracy:.0%}"


def per_task_field(value: Any) -> int | None:
    """The "Examples per task" control: a whole number from 1 to 10,000 (empty: every example)."""
    return None if value is None else int(number_field(value, "Examples per task", 1, 10_000, integer=True))


def write_downloads(session: Session, result: dict[str, Any]) -> list[str]:
    """results.json, results.csv and recipe.yaml in the session's results folder (gradio serves them; the next
    evaluation replaces them, and the folder goes with the session)."""
    folder = session_downloads(session, "results")
    # The recipe scored is the one evaluate() put in the result (a later merge does not rename it).
    scored = result.get("recipe", recorded_recipe(session, session.recipe).to_dict() if session.recipe else None)
    written = write_results(folder / "results.json", {**result, "recipe": scored})
    paths = [str(written["json"]), str(written["csv"])]
    if scored is not None:
        (folder / "recipe.yaml").write_text(Recipe.from_dict(scored).to_yaml(), encoding="utf-8")
        paths.append(str(folder / "recipe.yaml"))
    return paths


# --- components ----------------------------------------------------------------------------------------------------

@dataclass
class EvaluatePanel:
    task_file: gr.File
    per_task: gr.Slider
    run: gr.Button
    status: gr.Markdown
    chart: gr.Plot
    table: gr.Markdown
    downloads: gr.File
    sweep_method: gr.Dropdown
    sweep_rows: gr.Dropdown
    sweep_weights: gr.Textbox
    sweep_columns: gr.Dropdown
    sweep_densities: gr.Textbox
    sweep_metric: gr.Dropdown
    sweep_run: gr.Button
    sweep_cancel: gr.Button
    sweep_best: gr.Markdown
    sweep_chart: gr.Plot
    sweep_point: gr.Dropdown
    sweep_use: gr.Button
    sweep_files: gr.File
    sweep_runner: gr.Radio | None = None
    search: sweep_search.SearchControls | None = None

    @property
    def sweep_inputs(self) -> list[gr.components.Component]:
        # The API's first six inputs are the old ones (method, rows grid, columns grid, metric, per task, file).
        return [self.sweep_method, self.sweep_weights, self.sweep_densities, self.sweep_metric, self.per_task,
                self.task_file, self.sweep_rows, self.sweep_columns, self.sweep_runner]

    @property
    def search_inputs(self) -> list[gr.components.Component]:
        return [self.sweep_method, self.sweep_metric, self.per_task, self.task_file, self.search.sampler,
                self.search.budget, self.search.compare, self.sweep_runner]


def build(config: HostConfig) -> EvaluatePanel:
    gr.Markdown("Scores the merged model on the family's task set (or your own JSONL file): how often it gives each "
                "expert's answer, and its accuracy where answers are known.")
    with gr.Row():
        task_file = gr.File(label="Task file (optional, JSONL)", file_types=[".jsonl", ".json"], type="filepath",
                            elem_id="eval-task-file")
        per_task = gr.Slider(5, 200, value=DEFAULT_PER_TASK, step=5, label="Examples per task",
                             elem_id="eval-per-task")
    run = gr.Button("Evaluate", variant="primary", elem_id="eval-run")
    status = gr.Markdown(elem_id="eval-status")
    chart = gr.Plot(label="Agreement", elem_id="eval-chart")
    table = gr.Markdown(elem_id="eval-table")
    downloads = gr.File(label="Downloads: results and recipe", file_count="multiple", elem_id="eval-downloads",
                        interactive=False)
    gr.Markdown("### Sweep\nEvery point is the Merge tab's settings with one or two of them varied, merged in memory "
                "and scored on the same tasks; the best cell is starred. Grids: `start:stop:step` or `0.3,0.5,0.9`.")
    method = "ties"
    choices, rows, columns = sweep_axes(None, method)
    with gr.Row():
        sweep_method = gr.Dropdown(sweep_methods(), value=method, label="Method", elem_id="sweep-method")
        sweep_metric = gr.Dropdown(list(SWEEP_METRICS), value="accuracy", label="Metric (a mean, or one task's)",
                                   elem_id="sweep-metric", allow_custom_value=True)
        sweep_runner = gr.Radio(list(RUNNER_CHOICES), value=RUNNER_CHOICES[0], label="Run on",
                                interactive=runner_note() == "" and not config.hosted, info=runner_note() or None,
                                elem_id="sweep-runner")
    with gr.Row():
        sweep_rows = gr.Dropdown(choices, value=rows, label="Rows: vary", elem_id="sweep-rows")
        sweep_weights = gr.Textbox(default_grid(method, rows), label="Row values", elem_id="sweep-weights")
        sweep_columns = gr.Dropdown([NO_AXIS, *choices], value=columns or NO_AXIS, label="Columns: vary",
                                    elem_id="sweep-columns")
        sweep_densities = gr.Textbox(default_grid(method, columns), label="Column values", elem_id="sweep-densities")
    with gr.Row():
        sweep_run = gr.Button("Run sweep", variant="primary", elem_id="sweep-run")
        sweep_cancel = gr.Button("Stop", variant="stop", elem_id="sweep-cancel")
    sweep_best = gr.Markdown(elem_id="sweep-best")
    sweep_chart = gr.Plot(label="Sweep", elem_id="sweep-chart")
    with gr.Row(equal_height=True):
        sweep_point = gr.Dropdown([], label="Point", elem_id="sweep-point", scale=3)
        sweep_use = gr.Button("Use this point", elem_id="sweep-use", scale=1)
    sweep_files = gr.File(label="Sweep results (JSON, CSV, best recipe)", file_count="multiple", interactive=False,
                          elem_id="sweep-files")
    search = sweep_search.build_search()
    return EvaluatePanel(task_file, per_task, run, status, chart, table, downloads, sweep_method, sweep_rows,
                         sweep_weights, sweep_columns, sweep_densities, sweep_metric, sweep_run, sweep_cancel,
                         sweep_best, sweep_chart, sweep_point, sweep_use, sweep_files, sweep_runner, search)


def evaluated_text(session: Session) -> str:
    """The Evaluate status after scoring: which merge (its number) and its settings."""
    version = getattr(session.merge, "version", None)
    number = f" #{version}" if version is not None else ""
    return f"✓ Evaluated the current merge{number}: {settings_summary(session.merge_settings, session.labels)}."


def stale_note(session: Session | None, shown: str) -> Any:
    """After the merge changes, an evaluation on screen says it is of an earlier merge."""
    if session is None or not shown or not shown.startswith("✓ Evaluated") or session.merge_settings is None:
        return gr.update()
    if shown.startswith(evaluated_text(session)):
        return gr.update()
    return ("⚠ **Out of date**: the merge has changed since this evaluation (the chart below is of the earlier "
            "one). Press **Evaluate** to score the current merge.\n\n"
            + shown.replace("✓ Evaluated the current merge", "Shown: the earlier merge", 1))


def wire(panel: EvaluatePanel, state: gr.State, config: HostConfig) -> None:
    _wire_evaluate(panel, state, config)
    _wire_sweep(panel, state, config)


def _wire_evaluate(panel: EvaluatePanel, state: gr.State, config: HostConfig) -> None:
    """Evaluate: score the current merge (errors in the status line)."""

    @guarded(config, "evaluate", in_place=True)
    def run(session: Session, task_file: str | None, per_task: float, progress: gr.Progress = gr.Progress()):
        merged = merge_if_none(session, config, progress)  # as Chat does: nothing merged yet, merge what Merge shows
        progress(0.1, desc="Scoring the experts (once) and the merged model…")
        result = evaluate(session, config, task_file, per_task_field(per_task))
        status = evaluated_text(session) + ("\n\n(Nothing was merged yet: merged the Merge tab's settings first.)"
                                            if merged else "")
        return (status, agreement_figure(result), summary_markdown(result),
                write_downloads(session, result))

    run = on_gpu(run)  # ZeroGPU on a Space; unchanged elsewhere
    panel.run.click(run, [state, panel.task_file, panel.per_task],
                    [panel.status, panel.chart, panel.table, panel.downloads], api_name="evaluate").failure(
        in_place_error("evaluate"), state, panel.status, api_visibility="private", show_progress="hidden")


def _wire_sweep(panel: EvaluatePanel, state: gr.State, config: HostConfig) -> None:
    """Sweep: run it (errors in the best-point line), its axes follow the method, and cancel."""

    @guarded(config, "sweep", in_place=True)
    def run_sweep(session: Session, method: str, rows_grid: str, columns_grid: str, metric: str, per_task: float,
                  task_file: str | None, rows: str | None = None, columns: str | None = None,
                  runner: str | None = None, progress: gr.Progress = gr.Progress()):
        def run(partial: Any) -> Any:
            return sweep(session, config, method, rows_grid, columns_grid, metric, per_task_field(per_task),
                         task_file, progress, rows or None, columns or None, runner, partial)

        total = grid_points(rows_grid, columns_grid if columns not in (NO_AXIS, "") else None)
        workers = sweep_search.RAY_WORKERS if runner == RUNNER_CHOICES[1] else 1
        yield sweep_search.starting_text(session.sweep, total, workers), gr.update(), gr.update(), gr.update()
        for kind, result in sweep_search.streamed(run):  # the heatmap fills in as points finish
            if kind == "partial":
                yield (sweep_search.progress_text(result, total, workers), sweep_heatmap(result), gr.update(),
                       gr.update())
        figure, best, files = sweep_outputs(result, session_downloads(session, "sweep"))
        if result.failed:
            best += "\n\n" + "\n".join(f"Not scored: {f['label']}: {f['incident']}" for f in result.failed)
        choices = point_choices(result)
        yield best, figure, files, gr.update(choices=choices, value=choices[0][1] if choices else None)

    run_sweep = on_gpu(run_sweep)
    panel.sweep_run.click(
        run_sweep, [state, *panel.sweep_inputs],
        [panel.sweep_best, panel.sweep_chart, panel.sweep_files, panel.sweep_point], api_name="sweep").failure(
        in_place_error("sweep"), state, panel.sweep_best, api_visibility="private", show_progress="hidden")
    _wire_sweep_axes(panel, state)
    _wire_search(panel, state, config)
    panel.sweep_metric.focus(lambda session: gr.update(choices=metric_choices(session)), state, panel.sweep_metric,
                             api_visibility="private", show_progress="hidden")

    def stop(session: Session) -> None:
        session.cancel.set()

    panel.sweep_cancel.click(stop, state, None, api_visibility="private")


def _wire_search(panel: EvaluatePanel, state: gr.State, config: HostConfig) -> None:
    """Search: run it (errors in its summary); Stop is the sweep's; its proposals fill the Point list."""

    @guarded(config, "search", in_place=True)
    def run_search(session: Session, method: str, metric: str, per_task: float, task_file: str | None, sampler: str,
                   budget: float, compare: bool, runner: str | None = None, progress: gr.Progress = gr.Progress()):
        result = search(session, config, method, metric, per_task_field(per_task), task_file, sampler, int(budget),
                        bool(compare), runner, progress)
        written = result.write(session_downloads(session, "search") / "search.json")  # one folder per session
        choices = point_choices(session.sweep)
        return (sweep_search.search_markdown(result), sweep_search.search_figure(result),
                [str(p) for p in written.values()], gr.update(choices=choices, value=choices[0][1] if choices else None))

    run_search = on_gpu(run_search)
    controls = panel.search
    controls.run.click(run_search, [state, *panel.search_inputs],
                       [controls.summary, controls.chart, controls.files, panel.sweep_point], api_name="search").failure(
        in_place_error("search"), state, controls.summary, api_visibility="private", show_progress="hidden")


def _wire_sweep_axes(panel: EvaluatePanel, state: gr.State) -> None:
    """Another method offers its own axes; another axis gets its default grid."""

    def axes_for(session: Session | None, method: str):
        choices, rows, columns = sweep_axes(session, method)
        return (gr.update(choices=choices, value=rows), default_grid(method, rows),
                gr.update(choices=[NO_AXIS, *choices], value=columns or NO_AXIS), default_grid(method, columns))

    axis_outputs = [panel.sweep_rows, panel.sweep_weights, panel.sweep_columns, panel.sweep_densities]
    panel.sweep_method.input(axes_for, [state, panel.sweep_method], axis_outputs, api_visibility="private",
                             show_progress="hidden")
    panel.sweep_rows.input(lambda m, a: default_grid(m, a), [panel.sweep_method, panel.sweep_rows],
                           panel.sweep_weights, api_visibility="private", show_progress="hidden")
    panel.sweep_columns.input(lambda m, a: default_grid(m, a), [panel.sweep_method, panel.sweep_columns],
                              panel.sweep_densities, api_visibility="private", show_progress="hidden")
