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


# --- presentation ----------------------------------------------------------------------------------------------------

def agreement_figure(result: dict[str, Any]):
    """Grouped bars: per task, the merged model's agreement with each source expert (accuracy where known)."""
    try:
        from evaluation.charts import agreement_figure as chart

        return chart(result)
    except (ImportError, AttributeError, TypeError):
        pass
    import plotly.graph_objects as go

    tasks = result["tasks"]
    sources = sorted({s for t in tasks.values() for s in t["agreement_by_source"]})
    fig = go.Figure()
    for source in sources:
        fig.add_bar(name=f"agrees with {source}", x=list(tasks),
                    y=[tasks[t]["agreement_by_source"].get(source) for t in tasks])
    if any(t["accuracy"] is not None for t in tasks.values()):
        fig.add_bar(name="accuracy", x=list(tasks), y=[tasks[t]["accuracy"] for t in tasks],
                    marker_pattern_shape="/")
    fig.update_layout(title="Agreement of the merged model with each expert, per task", barmode="group",
                      yaxis=dict(range=[0, 1], tickformat=".0%", title="share of examples"),
                      legend=dict(orientation="h", y=-0.2), margin=dict(t=60, b=40), height=420)
    return fig


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
    return EvaluatePanel(task_file, per_task, run, status, chart, table, downloads)


def wire(panel: EvaluatePanel, state: gr.State, config: HostConfig) -> None:
    from ui.feedback import guarded

    @guarded(config, "evaluate")
    def run(session: Session, task_file: str | None, per_task: float, progress: gr.Progress = gr.Progress()):
        progress(0.1, desc="Scoring the experts (once) and the merged model…")
        result = evaluate(session, config, task_file, int(per_task))
        return ("✅ Evaluated the current merge.", agreement_figure(result), summary_markdown(result),
                write_downloads(session, result))

    panel.run.click(run, [state, panel.task_file, panel.per_task],
                    [panel.status, panel.chart, panel.table, panel.downloads], api_name="evaluate")
