"""Classify panel (classifier families): a sentence in, each task's label from the merged encoder read through that
task's own head, beside the label its teacher (the expert) gives."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from inference import classify_batch
from merging.errors import MergeLabError
from ui.feedback import guarded
from ui.hosting import HostConfig
from ui.resources import session_tokenizer, shared_model
from ui.session import Session
from ui.workspace import require_models

HEADERS = ["task", "merged model", "teacher", "same?"]


def _label(model, index: int) -> str:
    id2label = getattr(model.config, "id2label", None) or {}
    return str(id2label.get(index, id2label.get(str(index), index)))


def classify(session: Session, config: HostConfig, text: str) -> list[list[str]]:
    """/classify: one row per task: (task, merged label, teacher label, whether they agree)."""
    require_models(session)
    if session.kind != "classifier":
        raise MergeLabError("Classify is for classifier families (e.g. the zoo's classifiers); chat with language "
                            "models in the Chat tab.")
    text = (text or "").strip()
    if not text:
        raise MergeLabError("Type a sentence to classify.")
    if not session.classifier_models:
        raise MergeLabError("Merge the models first (Merge tab), then classify.")
    rows = []
    for source in session.sources:
        merged = session.classifier_models[source.label]
        teacher = shared_model(source.path)
        tokenizer = session_tokenizer(session, source.path)
        ours = _label(merged.model, classify_batch(merged.model, merged.tokenizer, [text])[0])
        theirs = _label(teacher.model, classify_batch(teacher.model, tokenizer, [text])[0])
        rows.append([source.label, ours, theirs, "✓" if ours == theirs else "✗"])
    return rows


@dataclass
class ClassifyPanel:
    text: gr.Textbox
    run: gr.Button
    table: gr.Dataframe


def build(config: HostConfig) -> ClassifyPanel:
    gr.Markdown("For classifier families: each task's label from the merged encoder (through the task's own head) "
                "beside its teacher's.")
    with gr.Row():
        text = gr.Textbox(label="Sentence", placeholder="the movie was not good", scale=4, elem_id="classify-text")
        run = gr.Button("Classify", variant="primary", elem_id="classify-run")
    table = gr.Dataframe(headers=HEADERS, interactive=False, elem_id="classify-table")
    return ClassifyPanel(text, run, table)


def wire(panel: ClassifyPanel, state: gr.State, config: HostConfig) -> None:
    @guarded(config, "classify")
    def run(session: Session, text: str) -> list[list[str]]:
        return classify(session, config, text)

    panel.run.click(run, [state, panel.text], panel.table, api_name="classify")
    panel.text.submit(run, [state, panel.text], panel.table, api_visibility="private")
