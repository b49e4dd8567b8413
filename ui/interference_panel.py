"""Interference panel: how the sources' task vectors collide, as heatmaps a class can read: cosine similarity between
task vectors, the sign-conflict rate per layer and module, and how much of each task vector survives TIES trimming at
the chosen density."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from evaluation.charts import (
    conflict_by_layer_figure,
    cosine_heatmap,
    election_figure,
    interference_heatmap,
    kept_heatmap,
)
from evaluation.folder_state import LazyFolderState
from evaluation.interference import (
    interference_report,
    layers_changed,
    most_conflicting_tensor,
    random_conflict_rate,
    worked_example,
)
from merging.errors import MergeLabError
from merging.methods.registry import get_method
from merging.recipe import Recipe
from merging.settings import MergeSettings
from ui.evaluate_panel import reference_cell as evaluate_reference_cell
from ui.feedback import guarded
from ui.hosting import HostConfig
from ui.session import Session
from ui.workspace import build_recipe, require_models


def interference(session: Session, config: HostConfig, density: float = 0.5, progress: Any = None) -> dict:
    """/interference: the report as a dict (tasks, overall, by_layer, by_module, cells)."""
    require_models(session)
    if len(session.sources) < 2:
        raise MergeLabError("Interference needs at least two source models: add one in the Models tab.")
    if not 0.0 <= float(density) <= 1.0:
        raise MergeLabError(f"Density must be between 0 and 1 (got {density}).")
    base = LazyFolderState(session.base.path)
    experts = {s.label: LazyFolderState(s.path) for s in session.sources}
    step = (lambda done, total: progress(done / total, desc=f"Tensor {done}/{total}")) if progress else None
    report = interference_report(base, experts, density=float(density), per_tensor=False, progress=step)
    return report.to_dict()


@dataclass
class InterferencePanel:
    density: gr.Slider
    run: gr.Button
    cosine: gr.Plot
    conflicts: gr.Plot
    kept: gr.Plot


def build(config: HostConfig) -> InterferencePanel:
    gr.Markdown("Where the task vectors (source − base) pull in different directions: red cells are where merging "
                "has to choose; TIES keeps the largest entries and elects one sign per entry.")
    with gr.Row():
        density = gr.Slider(0.05, 1.0, value=0.5, step=0.05, label="Density (share TIES keeps)",
                            elem_id="interference-density")
        run = gr.Button("Show interference", variant="primary", elem_id="interference-run")
    cosine = gr.Plot(label="Cosine", elem_id="interference-cosine")
    with gr.Row():
        conflicts = gr.Plot(label="Sign conflicts", elem_id="interference-conflicts")
        kept = gr.Plot(label="Kept by trimming", elem_id="interference-kept")
    return InterferencePanel(density, run, cosine, conflicts, kept)


def wire(panel: InterferencePanel, state: gr.State, config: HostConfig) -> None:
    @guarded(config, "interference")
    def run(session: Session, density: float, progress: gr.Progress = gr.Progress()):
        report = interference(session, config, density, progress)
        return cosine_heatmap(report), interference_heatmap(report), kept_heatmap(report)

    outputs = [panel.cosine, panel.conflicts, panel.kept]
    panel.run.click(run, [state, panel.density], outputs, api_name="interference")
    # The charts follow the density slider (the trimming chart depends on it): redrawn when a drag ends or a value
    # is typed, the last value winning.
    gr.on([panel.density.release, panel.density.input], run, [state, panel.density], outputs,
          api_visibility="private", trigger_mode="always_last", show_progress="minimal")


# --- the lesson: one page from two experts to interference to a merge's score --------------------------------------

LESSON_INTRO = """## From two experts to one merged model

1. **Two experts, one base.** Each expert is the base model plus a *task vector* (expert − base): what fine-tuning on
   its task changed. Merging adds task vectors back onto the base. The first chart: how alike the task vectors are
   (cosine 1 = the same direction, 0 = unrelated, −1 = opposite).
2. **Where they disagree.** An entry of the weights that one expert raised and another lowered has a *sign
   conflict*: a plain average cancels both. The bars show the share of such entries per layer; the dashed line is
   what unrelated, random task vectors would give. Bars under the line: the experts pull together more than chance.
3. **One tensor up close.** Real numbers from the layer that conflicts most, merged by the method of the merge the
   lesson scores (the Merge tab's). Task arithmetic adds the weighted task vectors, so opposite values cancel;
   TIES keeps each task vector's largest entries (the density), elects one sign per entry (the sign of the kept
   values' sum), and averages only the kept values that agree with it: the loser's value is dropped.
4. **Who pays for each layer's conflicts.** Per layer, the share of the contested entries each task's sign wins;
   where a task loses, its expert's change is dropped. Then the merge's accuracy per task beside each expert's: the
   task that loses most elections is the one to watch.
"""


SIGN_NAMES = {1: "+", -1: "−", 0: "none"}


def lesson_example_markdown(example: Any, note: str = "") -> str:
    """The worked example as a table a class can follow: each task's value, what trimming drops and the sign elected
    (for the methods that do either), and the merged value; headed by the method, its settings and its rule."""
    method = get_method(example.method)
    settings = ", ".join(f"{t} {w:g}" for t, w in example.weights.items())
    density = "" if example.density is None else f" at density {example.density:g}"
    elects = any(row["elected"] is not None for row in example.rows)

    def value(row: dict, task: str) -> str:
        trimmed = row["kept"] is not None and not row["kept"][task]
        return f"~~{row['values'][task]:+.4f}~~ trimmed" if trimmed else f"{row['values'][task]:+.4f}"

    heading = (f"**{example.tensor}**, merged by **{method.name}**{density} (weights {settings}){note}: "
               f"{method.explanation}")
    lines = [heading, "", f"`{method.formula}`", "",
             "| entry | " + " | ".join(f"τ {t}" for t in example.tasks) + " | signs | "
             + ("elected sign | " if elects else "") + "merged τ |",
             "|---" * (len(example.tasks) + 3 + elects) + "|"]
    for row in example.rows:
        signs = "**conflict**" if row["conflict"] else "agree"
        elected = f"{SIGN_NAMES[row['elected']]} | " if elects else ""
        lines.append(f"| {row['index']} | " + " | ".join(value(row, t) for t in example.tasks)
                     + f" | {signs} | {elected}{row['merged']:+.4f} |")
    return "\n".join(lines)


def lesson_recipe(session: Session, density: float) -> tuple[Recipe | None, str]:
    """The merge the lesson teaches: the current merge's settings (else the Merge tab's starting ones), at the
    lesson's density when the method keeps a share of entries, as a recipe naming the models by label; and a note
    when that density is not the merge's own. (None, note) when nothing is set up yet: TIES at that density."""
    settings = session.merge_settings
    if settings is None:
        return None, " (no merge set up yet: TIES, weights 1)"
    kept = get_method(settings.method).by_role("kept_fraction")
    params, note = dict(settings.params), ""
    if kept is not None:
        own = params.get(kept.name)
        if own is not None and float(own) != float(density):
            note = f" (the lesson's density; the scored merge uses {float(own):g})"
        params[kept.name] = float(density)
    changed = MergeSettings(settings.method, list(settings.weights), params, settings.seed)
    return build_recipe(session, changed), note


def lesson_score_markdown(session: Session) -> str:
    """Step 4: the last evaluation of the current merge, per task, beside the experts; or how to get one."""
    result = session.evaluation
    if result is None or session.merge is None:
        return ("*No score yet: press **Score the merge**, which scores as the Evaluate tab does (its examples per "
                "task and task file), or Evaluate there.*")
    examples = max((score.examples for score in result.scores.values()), default=0)
    lines = [f"Scored: {session.merge.describe()}, {examples} examples a task", "",
             "| task | the merge | its expert | change |", "|---|---|---|---|"]
    for name, score in result.scores.items():
        merged, expert = score.accuracy, score.expert_accuracy
        change = f"{merged - expert:+.0%}" if merged is not None and expert is not None else "–"
        lines.append(f"| {name} | {'–' if merged is None else f'{merged:.0%}'} | {reference_cell(score)} | "
                     f"{change} |")
    return "\n".join(lines)


def reference_cell(score: Any) -> str:
    """The Evaluate table's reference cell (ui.evaluate_panel.reference_cell) for an evaluation.agreement.TaskScore."""
    return evaluate_reference_cell(score.expert, score.expert_accuracy, score.accuracy_by_source)


def lesson(session: Session, config: HostConfig, density: float = 0.5, progress: Any = None) -> list[Any]:
    """The lesson's charts and tables: cosine, conflicts per layer with the random line, the worked example from the
    most conflicting tensor (merged by the scored merge's method, lesson_recipe), and the merge's score."""
    report = interference(session, config, density, progress)
    base = LazyFolderState(session.base.path)
    experts = {s.label: LazyFolderState(s.path) for s in session.sources}
    name = most_conflicting_tensor(base, experts, report)
    if name is None:
        example_text = disjoint_experts_markdown(layers_changed(report))
    else:
        recipe, note = lesson_recipe(session, float(density))
        seed = session.merge_settings.seed if session.merge_settings is not None else 0
        example = worked_example(base, experts, name, density=float(density), recipe=recipe,
                                 num_layers=base.source.num_layers, seed=seed)
        example_text = lesson_example_markdown(example, note)
    reference = random_conflict_rate(len(report["tasks"]))
    return [cosine_heatmap(report), conflict_by_layer_figure(report, reference), example_text,
            election_figure(report), lesson_score_markdown(session)]


def disjoint_experts_markdown(layers: dict[str, list[str]]) -> str:
    """The lesson's third step where the experts share no changed entry: which layers each changes, and what that
    means for the merge (no conflicts to resolve; what it still loses comes from one expert's layers feeding the
    other's)."""
    where = "; ".join(f"**{task}** changes {_layer_ranges(keys)}" for task, keys in layers.items())
    return (f"**No weight is changed by two experts.** {where}. Their task vectors share no entry, so there is no "
            "sign to conflict and nothing for TIES to trim or elect against another expert: task arithmetic adds each "
            "expert's change, scaled by its weight, where it stands. What the merge still loses comes from one "
            "expert's layers changing the inputs that the other expert's layers see, which the scores below measure.")


def _layer_ranges(keys: list[str]) -> str:
    """"layers 0-9 and 12" from ["0", ..., "9", "12"]; "outside the layers" for "none"; "nothing" for none."""
    numbers = sorted(int(k) for k in keys if k != "none")
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    parts = [f"{a}-{b}" if a != b else f"{a}" for a, b in spans]
    text = ("layer " if len(numbers) == 1 else "layers ") + ", ".join(parts) if parts else ""
    if "none" in keys:
        text = f"{text} and tensors outside the layers" if text else "tensors outside the layers"
    return text or "nothing"


@dataclass
class LessonPanel:
    density: gr.Slider
    run: gr.Button
    cosine: gr.Plot
    conflicts: gr.Plot
    example: gr.Markdown
    elections: gr.Plot
    score_run: gr.Button
    score: gr.Markdown


def build_lesson(config: HostConfig) -> LessonPanel:
    with gr.Column(elem_id="lesson"):
        gr.Markdown(LESSON_INTRO)
        with gr.Row():
            density = gr.Slider(0.05, 1.0, value=0.5, step=0.05, label="Density (share TIES keeps)",
                                elem_id="lesson-density")
            run = gr.Button("Show the lesson", variant="primary", elem_id="lesson-run")
        with gr.Row():
            cosine = gr.Plot(label="1. How alike the task vectors are", elem_id="lesson-cosine")
            conflicts = gr.Plot(label="2. Sign conflicts per layer", elem_id="lesson-conflicts")
        example = gr.Markdown(elem_id="lesson-example")
        elections = gr.Plot(label="4. Who wins the sign elections", elem_id="lesson-elections")
        score_run = gr.Button("Score the merge", elem_id="lesson-score-run")
        score = gr.Markdown(elem_id="lesson-score")
    return LessonPanel(density, run, cosine, conflicts, example, elections, score_run, score)


def wire_lesson(panel: LessonPanel, state: gr.State, config: HostConfig, per_task: gr.Slider,
                task_file: gr.File) -> None:
    """`per_task` and `task_file`: the Evaluate tab's controls, so "Score the merge" scores as Evaluate does (the
    same examples) and the lesson's table shows the Evaluate tab's numbers."""
    from ui.evaluate_panel import evaluate, per_task_field
    from ui.merge_panel import merge_if_none

    @guarded(config, "lesson")
    def run(session: Session, density: float, progress: gr.Progress = gr.Progress()):
        return lesson(session, config, density, progress)

    panel.run.click(run, [state, panel.density],
                    [panel.cosine, panel.conflicts, panel.example, panel.elections, panel.score], api_name="lesson")

    @guarded(config, "score")
    def score(session: Session, examples: Any, uploaded: str | None, progress: gr.Progress = gr.Progress()):
        merge_if_none(session, config, progress)
        progress(0.2, desc="Scoring the experts (once) and the merge…")
        evaluate(session, config, uploaded, per_task_field(examples))
        return lesson_score_markdown(session)

    panel.score_run.click(score, [state, per_task, task_file], panel.score, api_visibility="private")
