"""Evaluate panel: per-task agreement of the merged model with each source expert (and accuracy where answers are
known) as bar charts; a (weight × density) sweep as a heatmap with the best point marked; results as JSON/CSV and the
recipe as YAML to download."""

from __future__ import annotations

import csv
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from merging.errors import MergeLabError, TaskSetError
from ui.hosting import HostConfig
from ui.session import Session
from ui.workspace import require_models

DEFAULT_PER_TASK = 20


def task_set_for(session: Session, uploaded: str | None, per_task: int | None):
    """The uploaded task file, else the zoo family's; only tasks whose expert is among the chosen sources (or that
    have none, like the composite japanese_math)."""
    from evaluation import load_tasks

    if uploaded:
        tasks = load_tasks(uploaded)
    elif session.tasks_path is not None and session.tasks_path.is_file():
        tasks = load_tasks(session.tasks_path)
    else:
        raise TaskSetError("Upload a task file (JSONL, one example a line: {\"task\", \"prompt\" or \"text\", "
                           "\"answer\" or \"label\", \"expert\"}) to evaluate these models.")
    labels = set(session.labels)
    kept = [e for e in tasks.examples if e.expert is None or e.expert in labels]
    if not kept:
        raise TaskSetError(f"No task in {tasks.source} belongs to the chosen sources ({', '.join(sorted(labels))}): "
                           "set each line's \"expert\" to one of them, or null for a task of none.")
    from evaluation.tasks import TaskSet

    return TaskSet(kept, source=tasks.source).limited(per_task)


def evaluator_for(session: Session, tasks: Any, key: tuple) -> Any:
    """One Evaluator per (task set, sources) and session: the experts' answers are computed once and reused."""
    from evaluation.agreement import Evaluator
    from inference import LoadedModel
    from ui.resources import session_tokenizer, shared_model

    cache = session.evaluators
    if key not in cache:
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
        cache.clear()  # keep one: the experts' predictions for the current choice only
        cache[key] = Evaluator(tasks, experts, template=template)
    return cache[key]


def score_merged(session: Session, evaluator: Any) -> Any:
    """Score the session's current merge (in-memory tensors, or its merged folder)."""
    if session.merged_tensors is not None:
        return evaluator.score_state(session.merged_tensors)
    if session.merged_path is not None:
        from inference import LoadedModel
        from ui.resources import session_tokenizer, shared_model

        if session.kind == "classifier":
            from ui.workspace import _read_all

            return evaluator.score_state(_read_all(session.merged_path))
        loaded = shared_model(session.merged_path)
        return evaluator.score(LoadedModel(loaded.model, session_tokenizer(session, session.merged_path), "lm"))
    raise MergeLabError("Merge the models first (Merge tab), then evaluate the result.")


def evaluate(session: Session, config: HostConfig, uploaded: str | None = None,
             per_task: int | None = DEFAULT_PER_TASK) -> dict[str, Any]:
    """/evaluate: the result as a dict (summary, per-task scores); also kept in the session for downloads."""
    require_models(session)
    per_task = int(per_task) if per_task else None
    tasks = task_set_for(session, uploaded, per_task)
    evaluator = evaluator_for(session, tasks, (tasks.source, per_task, tuple(session.labels), session.base.ref))
    result = score_merged(session, evaluator)
    session.evaluation = result
    return result.to_dict()


SWEEP_METRICS = ("accuracy", "agreement", "normalized_accuracy")
SWEEP_METHODS = ("ties", "dare_ties", "task_arithmetic", "magnitude_prune", "della", "breadcrumbs_ties")
MAX_SWEEP_POINTS = 64  # a bigger grid belongs on the command line (python -m evaluation sweep)


def sweep(session: Session, config: HostConfig, method: str = "ties", weights: str = "0.2:1.0:0.2",
          densities: str = "0.2:1.0:0.2", metric: str = "accuracy", per_task: int | None = DEFAULT_PER_TASK,
          uploaded: str | None = None, progress: Any = None) -> Any:
    """/sweep: merge and score every (weight, density) point in memory; returns the SweepResult."""
    from evaluation.sweep import parse_grid, run_sweep
    from ui.workspace import MergeSettings, build_recipe

    require_models(session)
    if session.live is None:
        raise MergeLabError("A sweep merges in memory, which is off for models this large: run it on a GPU host "
                            "with `python -m evaluation sweep`.")
    if metric not in SWEEP_METRICS:
        raise MergeLabError(f"Metric must be one of {', '.join(SWEEP_METRICS)}.")
    weight_grid, density_grid = parse_grid(weights, "weight"), parse_grid(densities, "density")
    if len(weight_grid) * len(density_grid) > MAX_SWEEP_POINTS:
        raise MergeLabError(f"{len(weight_grid)} × {len(density_grid)} points is more than {MAX_SWEEP_POINTS}: "
                            "use coarser steps, or the command line for big grids.")
    per_task = int(per_task) if per_task else None
    tasks = task_set_for(session, uploaded, per_task)
    evaluator = evaluator_for(session, tasks, (tasks.source, per_task, tuple(session.labels), session.base.ref))
    # The template names models by label, the keys of the session's LiveMerger and of the evaluator's experts.
    template = build_recipe(session, MergeSettings(method, [1.0] * len(session.sources)), by="label")
    session.cancel.clear()
    step = (lambda fraction, text: progress(fraction, desc=text)) if progress else None
    result = run_sweep(template, session.live, evaluator, weights=weight_grid, densities=density_grid,
                       metric=metric, progress=step, should_stop=session.cancel.is_set)
    session.sweep = result
    return result


def sweep_outputs(result: Any) -> tuple[Any, str, list[str]]:
    from evaluation.charts import sweep_heatmap

    best = result.best
    text = "No point was scored." if best is None else (
        f"**Best**: {best.method} at weight {best.weight:g}"
        + (f", density {best.density:g}" if best.density is not None else "")
        + f" → {result.metric} {best.value(result.metric):.0%} ({len(result.points)} points in {result.seconds:.1f} s)")
    folder = Path(tempfile.mkdtemp(prefix="mergelab-sweep-"))
    written = result.write(folder / "sweep.json")
    return sweep_heatmap(result), text, [str(p) for p in written.values()]


# --- presentation ----------------------------------------------------------------------------------------------------

def agreement_figure(result: dict[str, Any]):
    """Grouped bars: per task, the merged model's agreement with each source expert (accuracy where known)."""
    from evaluation.charts import agreement_figure as chart

    return chart(result)


def summary_markdown(result: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "–" if v is None else f"{v:.0%}"

    lines = ["| task | own expert | agreement with it | accuracy | expert's accuracy | examples |",
             "|---|---|---|---|---|---|"]
    for name, s in result["tasks"].items():
        lines.append(f"| {name} | {s['expert'] or '(none)'} | {pct(s['agreement'])} | {pct(s['accuracy'])} | "
                     f"{pct(s['expert_accuracy'])} | {s['examples']} |")
    summary = result["summary"]
    lines.append(f"\n**Mean** agreement {pct(summary['agreement'])} · accuracy {pct(summary['accuracy'])} · "
                 f"normalized accuracy {pct(summary['normalized_accuracy'])}")
    return "\n".join(lines)


def write_downloads(session: Session, result: dict[str, Any]) -> list[str]:
    """results.json, results.csv and recipe.yaml in a fresh temporary folder (gradio serves them)."""
    folder = Path(tempfile.mkdtemp(prefix="mergelab-results-"))
    (folder / "results.json").write_text(json.dumps({"recipe": session.recipe.to_dict() if session.recipe else None,
                                                     **result}, ensure_ascii=False, indent=2), encoding="utf-8")
    with (folder / "results.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["task", "expert", "examples", "agreement", "accuracy", "expert_accuracy",
                         "normalized_accuracy"])
        for name, s in result["tasks"].items():
            writer.writerow([name, s["expert"] or "", s["examples"], s["agreement"], s["accuracy"],
                             s["expert_accuracy"], s["normalized_accuracy"]])
    paths = [str(folder / "results.json"), str(folder / "results.csv")]
    if session.recipe is not None:
        (folder / "recipe.yaml").write_text(session.recipe.to_yaml(), encoding="utf-8")
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
    sweep_weights: gr.Textbox
    sweep_densities: gr.Textbox
    sweep_metric: gr.Dropdown
    sweep_run: gr.Button
    sweep_cancel: gr.Button
    sweep_best: gr.Markdown
    sweep_chart: gr.Plot
    sweep_files: gr.File


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
    gr.Markdown("### Sweep: weight × density\nEvery point is merged in memory and scored on the same tasks; the best "
                "is starred. Grids: `start:stop:step` or `0.3,0.5,0.9`.")
    with gr.Row():
        sweep_method = gr.Dropdown(list(SWEEP_METHODS), value="ties", label="Method", elem_id="sweep-method")
        sweep_weights = gr.Textbox("0.2:1.0:0.2", label="Weights (every source)", elem_id="sweep-weights")
        sweep_densities = gr.Textbox("0.2:1.0:0.2", label="Densities", elem_id="sweep-densities")
        sweep_metric = gr.Dropdown(list(SWEEP_METRICS), value="accuracy", label="Metric", elem_id="sweep-metric")
    with gr.Row():
        sweep_run = gr.Button("Run sweep", variant="primary", elem_id="sweep-run")
        sweep_cancel = gr.Button("Stop", variant="stop", elem_id="sweep-cancel")
    sweep_best = gr.Markdown(elem_id="sweep-best")
    sweep_chart = gr.Plot(label="Sweep", elem_id="sweep-chart")
    sweep_files = gr.File(label="Sweep results (JSON, CSV, best recipe)", file_count="multiple", interactive=False,
                          elem_id="sweep-files")
    return EvaluatePanel(task_file, per_task, run, status, chart, table, downloads, sweep_method, sweep_weights,
                         sweep_densities, sweep_metric, sweep_run, sweep_cancel, sweep_best, sweep_chart, sweep_files)


def wire(panel: EvaluatePanel, state: gr.State, config: HostConfig) -> None:
    from ui.feedback import guarded

    @guarded(config, "evaluate")
    def run(session: Session, task_file: str | None, per_task: float, progress: gr.Progress = gr.Progress()):
        progress(0.1, desc="Scoring the experts (once) and the merged model…")
        result = evaluate(session, config, task_file, int(per_task))
        return ("✓ Evaluated the current merge.", agreement_figure(result), summary_markdown(result),
                write_downloads(session, result))

    from ui.resources import on_gpu

    run = on_gpu(run)  # ZeroGPU on a Space; unchanged elsewhere
    panel.run.click(run, [state, panel.task_file, panel.per_task],
                    [panel.status, panel.chart, panel.table, panel.downloads], api_name="evaluate")

    @guarded(config, "sweep")
    def run_sweep(session: Session, method: str, weights: str, densities: str, metric: str, per_task: float,
                  task_file: str | None, progress: gr.Progress = gr.Progress()):
        result = sweep(session, config, method, weights, densities, metric, int(per_task), task_file, progress)
        figure, best, files = sweep_outputs(result)
        return best, figure, files

    run_sweep = on_gpu(run_sweep)
    panel.sweep_run.click(
        run_sweep, [state, panel.sweep_method, panel.sweep_weights, panel.sweep_densities, panel.sweep_metric,
                    panel.per_task, panel.task_file], [panel.sweep_best, panel.sweep_chart, panel.sweep_files],
        api_name="sweep")

    def stop(session: Session) -> None:
        session.cancel.set()

    panel.sweep_cancel.click(stop, state, None, api_visibility="private")

