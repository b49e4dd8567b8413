"""Interference panel: how the sources' task vectors collide, as heatmaps a class can read: cosine similarity between
task vectors, the sign-conflict rate per layer and module, and how much of each task vector survives TIES trimming at
the chosen density."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from evaluation.charts import cosine_heatmap, interference_heatmap, kept_heatmap
from evaluation.folder_state import LazyFolderState
from evaluation.interference import interference_report
from merging.errors import MergeLabError
from ui.feedback import guarded
from ui.hosting import HostConfig
from ui.session import Session
from ui.workspace import require_models


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
