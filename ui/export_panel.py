"""Export panel: save the merged model as a folder (sharded safetensors, config, tokenizer, a model card holding the
recipe), download the recipe as mergekit YAML, push the folder to the Hugging Face Hub with a token."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from huggingface_hub import HfApi

from merging.engine import merge_to_folder
from merging.errors import MergeLabError, SourceError
from merging.export import RecipeExport, mergekit_export
from ui.catalog import hub_reachable
from ui.feedback import guarded, in_place_error
from ui.hosting import HostConfig
from ui.resources import device
from ui.session import Session, session_downloads
from ui.workspace import folder_recipe, recorded_recipe, require_models, shown_names


def _require_merge(session: Session) -> None:
    require_models(session)
    if session.recipe is None:
        raise MergeLabError("Merge the models first (Merge or Learn tab); there is nothing to export yet.")


def recipe_export(session: Session) -> RecipeExport:
    """The session's recipe as mergekit 0.1.5 runs it (mergekit_config.yml), or, for a method mergekit lacks, the
    MergeLab recipe with a comment on top saying so (mergelab_recipe.yaml): never a file labelled mergekit YAML
    that mergekit refuses."""
    _require_merge(session)
    return mergekit_export(recorded_recipe(session, session.recipe))


def recipe_yaml(session: Session) -> str:
    return recipe_export(session).text


def recipe_file(session: Session) -> str:
    """/export_yaml: the recipe as a downloadable file (see recipe_export for which one)."""
    export = recipe_export(session)
    path = session_downloads(session, "recipe") / export.filename  # one folder per session, not one per call
    path.write_text(export.text, encoding="utf-8")
    return str(path)


def save_folder(session: Session, config: HostConfig, name: str, progress: Any = None) -> str:
    """/export: write the merged model to ./models/merged/<session>/<name> (streamed by the engine)."""
    return _shown(config, _save(session, config, name, progress))


def _save(session: Session, config: HostConfig, name: str, progress: Any = None) -> Path:
    """The current merge as a folder: its own folder when it was merged to that one, else written now."""
    _require_merge(session)
    record = session.merge
    out = session.merged_folder(config.models_dir, name or "merged")
    if record.folder is not None and record.folder == out and out.is_dir():
        return out
    recipe = folder_recipe(session, record.recipe)

    def report(p: Any) -> None:
        if progress is not None:
            progress(p.fraction, desc=f"Tensor {p.tensor_index}/{p.num_tensors}")

    session.cancel.clear()
    merge_to_folder(recipe, out, device=device(), seed=record.settings.seed, progress=report, cancel=session.cancel,
                    overwrite=True, shown_names=shown_names(session))
    session.record_saved(record, out)
    return out


def _shown(config: HostConfig, out: Path) -> str:
    root = config.models_dir.parent
    shown = out.relative_to(root) if out.is_relative_to(root) else out
    return (f"✓ Saved to `{shown}`: safetensors shards, config, tokenizer and a model card with the recipe."
            + task_folders_text(out, shown))


def task_folders_text(out: Path, shown: Path) -> str:
    """Classifier families: the per-task folders the engine wrote (merged encoder + that task's own head)."""
    tasks = sorted(p.name for p in (out / "tasks").iterdir() if p.is_dir()) if (out / "tasks").is_dir() else []
    if not tasks:
        return ""
    return ("\n\nEach task's head is not merged; each task has a loadable folder (merged encoder + its own head): "
            + ", ".join(f"`{shown}/tasks/{t}`" for t in tasks) + ".")


def push_to_hub(session: Session, config: HostConfig, repo_id: str, token: str, private: bool = True) -> str:
    """/push: upload the saved folder. Fails at once, saying why, without network or token."""
    _require_merge(session)
    repo_id = (repo_id or "").strip()
    if not repo_id or "/" not in repo_id:
        raise MergeLabError("Give the repository as owner/name, e.g. your-name/my-merge.")
    if not (token or "").strip():
        raise MergeLabError("Paste a Hugging Face token with write access (Settings → Access Tokens).")
    if not hub_reachable():  # not require_hub: its advice (download models elsewhere) is about choosing models
        raise SourceError(f"Cannot push to {repo_id!r}: this server cannot reach the Hugging Face Hub right now. "
                          "Save the merged folder (above) and upload it from a machine with network, or try again "
                          "later.")
    folder = session.merged_path or _save(session, config, "merged")
    api = HfApi(token=token.strip())
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id)
    except Exception as error:  # noqa: BLE001 - auth, quota and network errors all become one message
        raise SourceError(f"Could not push to {repo_id!r}: {error}. Check the token's write access and the name."
                          ) from None
    return f"✓ Pushed to https://huggingface.co/{repo_id}"


# --- components ----------------------------------------------------------------------------------------------------

@dataclass
class ExportPanel:
    name: gr.Textbox
    save: gr.Button
    yaml_button: gr.Button
    yaml_file: gr.File
    yaml_text: gr.Code
    repo: gr.Textbox
    token: gr.Textbox
    private: gr.Checkbox
    push: gr.Button
    status: gr.Markdown


def build(config: HostConfig) -> ExportPanel:
    with gr.Row():
        name = gr.Textbox("merged", label="Folder name", elem_id="export-name")
        save = gr.Button("Save folder", variant="primary", elem_id="export-save")
        yaml_button = gr.Button("Recipe as mergekit YAML", elem_id="export-yaml")
    yaml_file = gr.File(label="mergekit YAML", interactive=False, elem_id="export-yaml-file")
    yaml_text = gr.Code(language="yaml", label="Recipe", interactive=False, elem_id="export-yaml-text")
    with gr.Row():
        repo = gr.Textbox(label="Hub repository (owner/name)", elem_id="export-repo")
        token = gr.Textbox(label="Hugging Face token (write)", type="password", elem_id="export-token")
        private = gr.Checkbox(True, label="Private", elem_id="export-private")
        push = gr.Button("Push to the Hub", elem_id="export-push")
    status = gr.Markdown(elem_id="export-status")
    return ExportPanel(name, save, yaml_button, yaml_file, yaml_text, repo, token, private, push, status)


def wire(panel: ExportPanel, state: gr.State, config: HostConfig) -> None:
    @guarded(config, "export")
    def save(session: Session, name: str, progress: gr.Progress = gr.Progress()) -> str:
        return save_folder(session, config, name, progress)

    @guarded(config, "export YAML")
    def yaml_out(session: Session):
        return recipe_file(session), recipe_yaml(session)

    @guarded(config, "push", in_place=True)
    def push(session: Session, repo: str, token: str, private: bool) -> str:
        return push_to_hub(session, config, repo, token, private)

    panel.save.click(save, [state, panel.name], panel.status, api_name="export")
    panel.yaml_button.click(yaml_out, state, [panel.yaml_file, panel.yaml_text], api_name="export_yaml")
    panel.push.click(push, [state, panel.repo, panel.token, panel.private], panel.status, api_name="push").failure(
        in_place_error("push"), state, panel.status, api_visibility="private", show_progress="hidden")
