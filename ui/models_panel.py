"""Models panel: pick a catalog preset, a zoo family, local folders or Hub ids; the pre-flight report says whether
they can be merged and what it will cost, before anything heavy starts."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

import gradio as gr

from merging.errors import SourceError
from merging.methods import get_method
from merging.preflight import preflight
from merging.settings import MergeSettings
from merging.sources import check_ref_text
from ui.catalog import Preset, get_preset, hub_reachable, load_catalog
from ui.hosting import HostConfig
from ui.resources import device
from ui.session import Session
from ui.workspace import (
    ORIGINS,
    build_recipe_for_engine,
    live_mode_text,
    prepare_live,
    select_models,
    zoo_families,
)
from zoo.build import ensure_family
from zoo.families import is_family_built

DEFAULT_PRESET_ENV = "MERGELAB_DEFAULT_PRESET"  # a preset's name; unset: the catalog's first preset


def default_preset_name() -> str:
    """The preset a visitor lands on (checked on arrival, merged by the one-click start)."""
    presets = load_catalog()
    wanted = os.environ.get(DEFAULT_PRESET_ENV)
    if wanted:
        return get_preset(wanted, presets).name
    return presets[0].name


def start_default_family_build() -> threading.Thread | None:
    """On a first start, build the default preset's zoo family in the background (a tqdm bar in the terminal), so it
    is ready, or nearly, when the first visitor arrives; a page load meanwhile waits for the same build and shows
    its progress. None when there is nothing to build."""
    preset = get_preset(default_preset_name())
    family = zoo_families().get(preset.family) if preset.source == "zoo" else None
    if family is None or family.root is None or is_family_built(family):
        return None

    def build() -> None:
        try:
            ensure_family(family.name)
        except Exception as error:  # noqa: BLE001 - the page load retries the build and shows the message
            logging.getLogger("mergelab.ui").warning("Building the %s family failed: %s", family.name, error)

    # gradio swaps tqdm's methods the first time a gr.Progress(track_tqdm=True) is made (building the page makes
    # one); a bar made before that swap and updated after it fails ("'tqdm' object has no attribute '_progress'").
    # Swap them now, so the build's bars are made after it whatever the order of start-up.
    gr.Progress(track_tqdm=True)
    thread = threading.Thread(target=build, name=f"build-{family.name}", daemon=True)
    thread.start()
    return thread


def suggested_prompts(preset_name: str | None = None) -> list[str]:
    """Chat prompts for the default preset: the ones the catalog says its starting merge answers well, else the
    first prompt of each task of its zoo family (when built); [] when neither is there."""
    preset = get_preset(preset_name or default_preset_name())
    if preset.prompts:
        return list(preset.prompts)
    family = zoo_families().get(preset.family) if preset.source == "zoo" else None
    tasks = getattr(family, "tasks", None)
    if tasks is None or not tasks.is_file():
        return []
    first: dict[str, str] = {}
    for line in tasks.read_text(encoding="utf-8").splitlines():
        example = json.loads(line) if line.strip() else {}
        if example.get("prompt") and example.get("task") not in first:
            first[example["task"]] = example["prompt"]
    return list(first.values())[:4]


@dataclass
class ModelsChoice:
    """The Models panel's controls as values (what /preflight takes)."""

    origin: str
    family: str | None
    experts: list[str]
    base: str
    sources: str


def preset_choice(preset: Preset) -> ModelsChoice:
    if preset.source == "zoo":
        return ModelsChoice("Zoo", preset.family, list(preset.models), "", "")
    return ModelsChoice("Hub ids", None, [], preset.base or "", "\n".join(preset.models))


def preset_settings(preset: Preset | None, n_sources: int) -> MergeSettings:
    """The merge a preset starts from (task arithmetic at weight 1/n when there is no preset)."""
    if preset is None:
        return MergeSettings("task_arithmetic", [round(1 / max(n_sources, 1), 2)] * n_sources)
    params = dict(preset.parameters)
    weight = params.pop("weight", 1 / max(n_sources, 1))
    # One weight for every model, or one per model in the preset's order (a composition needs them unequal).
    weights = [float(w) for w in weight] if isinstance(weight, list | tuple) else [float(weight)] * n_sources
    if len(weights) != n_sources:
        raise SourceError(f"Preset {preset.name!r} gives {len(weights)} weights for {n_sources} models: give one "
                          "weight, or one per model.")
    return MergeSettings(preset.method, weights, params)


def describe_preset(name: str | None) -> str:
    if not name:
        return ""
    preset = get_preset(name)
    text = preset.about
    if preset.needs_hub:
        reachable = hub_reachable()
        text += ("\n\n✓ The Hugging Face Hub is reachable: the models download on Check models." if reachable else
                 "\n\n⚠ **This preset needs the Hugging Face Hub, which this server cannot reach.** Pick a zoo "
                 "preset, or give local folders of these models.")
    return text


def check_models(
    session: Session,
    config: HostConfig,
    choice: ModelsChoice,
    preset_name: str | None = None,
    progress: Any = None,
) -> str:
    """Resolve the chosen models, run the pre-flight check, and prepare live merging when the memory plan allows.
    Returns the report as Markdown (problems are listed in it, not raised)."""

    def step(fraction: float, text: str) -> None:
        if progress is not None:
            progress(fraction, desc=text)

    check_typed_refs(choice)
    preset = None
    if preset_name:
        candidate = get_preset(preset_name)
        if preset_choice(candidate) == choice:
            preset = candidate
    select_models(session, config, choice.origin, choice.family, choice.experts, choice.base, choice.sources,
                  progress=step)
    if preset is not None and preset.tasks_path is not None:  # Hub ids bring no task set: the preset names one
        session.tasks_path = preset.tasks_path
    settings = preset_settings(preset, len(session.sources))
    session.merge_settings = settings
    step(0.9, "Pre-flight check…")
    # Classifier families (per-task heads) go through the same check: it reports the heads as kept per task.
    report = preflight(build_recipe_for_engine(session, _fit_method(settings, session)), device=device())
    session.preflight = report
    ok, text = report.ok, _with_labels(report.to_markdown(), session)
    if ok:
        _prepare_live_in_turn(session, step)
        text += "\n\n" + live_mode_text(session)  # which mode, and the memory plan's reason
    return config.public_message(text)


MAX_TYPED_SOURCES = 64  # source lines in the "sources" box; the Merge tab shows 8 weights


def check_typed_refs(choice: ModelsChoice) -> None:
    """The typed base and source lines, refused before any is opened when no file system could take them (a NUL
    byte, a 5,000-character name): a short message naming the field, never the whole text back."""
    if choice.origin == "Zoo":
        return
    if choice.base:
        check_ref_text(choice.base, "Base model")
    lines = choice.sources.splitlines() if isinstance(choice.sources, str) else list(choice.sources or [])
    if len(lines) > MAX_TYPED_SOURCES:
        raise SourceError(f"{len(lines)} source lines: give at most {MAX_TYPED_SOURCES} models to merge.")
    for number, line in enumerate(lines, start=1):
        check_ref_text(line, f"Source model (line {number})")


# Reading every source into memory for live merging (2 GB for the SmolLM2 family) is the one slow part of a
# pre-flight: a few at a time, so the pre-flight event itself can run many at once (page.PREFLIGHT_CONCURRENCY) and a
# check that fails, or needs no loading, answers at once instead of queueing behind other sessions' loads.
LIVE_LOADS = threading.Semaphore(int(os.environ.get("MERGELAB_LIVE_LOADS", "2")))


def _prepare_live_in_turn(session: Session, step: Any) -> None:
    if not LIVE_LOADS.acquire(blocking=False):
        step(0.92, "Waiting for another session's models to finish loading…")
        LIVE_LOADS.acquire()
    try:
        step(0.95, "Reading the models into memory for live merging…")
        prepare_live(session)
    finally:
        LIVE_LOADS.release()


def _fit_method(settings: MergeSettings, session: Session) -> MergeSettings:
    method = get_method(settings.method)
    if method.max_models is not None and len(session.sources) > method.max_models:
        return MergeSettings("task_arithmetic", [1 / len(session.sources)] * len(session.sources))
    return settings


def _with_labels(markdown: str, session: Session) -> str:
    # The report names models by folder; show the labels the rest of the page uses.
    for model in [session.base, *session.sources]:
        markdown = markdown.replace(f"`{model.path}`", f"`{model.label}`").replace(str(model.path), model.label)
    return markdown


# --- components ----------------------------------------------------------------------------------------------------

@dataclass
class ModelsPanel:
    preset: gr.Dropdown
    preset_about: gr.Markdown
    origin: gr.Radio
    family: gr.Dropdown
    experts: gr.CheckboxGroup
    base: gr.Textbox
    sources: gr.Textbox
    check: gr.Button
    report: gr.Markdown
    quick: gr.Button  # one click: merge the checked models with the preset's settings and open Chat
    quick_status: gr.Markdown

    @property
    def choice_inputs(self) -> list[gr.components.Component]:
        return [self.origin, self.family, self.experts, self.base, self.sources]


def _family_experts(family: str | None) -> list[str]:
    families = zoo_families()
    return list(families[family].experts) if family in families else []


def build(config: HostConfig) -> ModelsPanel:
    presets = load_catalog()
    default = get_preset(default_preset_name(), presets)
    choice = preset_choice(default)
    families = list(zoo_families())
    with gr.Row():
        preset = gr.Dropdown([p.name for p in presets], value=default.name, label="Preset", scale=2,
                             elem_id="preset")
        preset_about = gr.Markdown(default.about, elem_id="preset-about")
    origin = gr.Radio(list(ORIGINS), value=choice.origin, label="Models from", elem_id="origin")
    with gr.Row():
        family = gr.Dropdown(families, value=choice.family, label="Zoo family", elem_id="zoo-family",
                             visible=choice.origin == "Zoo")
        experts = gr.CheckboxGroup(_family_experts(choice.family), value=choice.experts, label="Experts to merge",
                                   elem_id="zoo-experts", visible=choice.origin == "Zoo")
    where = "a folder inside models/" if config.hosted else "a local folder"
    with gr.Row():
        base = gr.Textbox(label="Base model", placeholder=f"{where} or a Hub id (e.g. mistralai/Mistral-7B-v0.1)",
                          visible=choice.origin != "Zoo", elem_id="base-model")
        sources = gr.Textbox(label="Source models (one per line)", lines=3, visible=choice.origin != "Zoo",
                             elem_id="source-models")
    with gr.Row():
        check = gr.Button("Check models", variant="primary", elem_id="check-models")
        quick = gr.Button("Merge and chat", variant="primary", elem_id="quick-start")
    quick_status = gr.Markdown("*New here? **Merge and chat** merges the chosen models with the preset's settings "
                               "and opens Chat, where a source model answers beside the merge.*",
                               elem_id="quick-status")
    report = gr.Markdown(elem_id="preflight-report")
    panel = ModelsPanel(preset, preset_about, origin, family, experts, base, sources, check, report, quick,
                        quick_status)
    _wire_choice(panel, default.name)
    return panel


_CHANGED = "*The choice changed: press **Check models** to check it.*"


def _wire_choice(panel: ModelsPanel, default: str) -> None:
    """The controls follow a preset, the origin and the zoo family; the report says when it no longer applies."""
    applied = gr.State(default)  # the preset whose choice the controls show
    choice_outputs = [panel.preset_about, panel.origin, panel.family, panel.experts, panel.base, panel.sources]
    panel.preset.input(apply_preset, [panel.preset, applied], [*choice_outputs, applied, panel.report],
                       api_visibility="private", show_progress="hidden")
    # The report speaks of the models last checked: once the choice changes, say so instead of showing it.
    gr.on([control.input for control in panel.choice_inputs], lambda: _CHANGED, None, panel.report,
          api_visibility="private", show_progress="hidden")
    panel.origin.input(show_origin, panel.origin, [panel.family, panel.experts, panel.base, panel.sources],
                       api_visibility="private")
    panel.family.input(lambda f: gr.CheckboxGroup(choices=_family_experts(f), value=_family_experts(f)),
                       panel.family, panel.experts, api_visibility="private")


def apply_preset(name: str, shown: str | None) -> list[Any] | tuple[Any, ...]:
    """The choice controls as preset `name` sets them, the preset as applied, and the report's "changed" note."""
    # The dropdown also reports an `input` when it merely loses focus (Escape, then a click elsewhere): with
    # the same preset that must change nothing, or it would undo the click (a choice of "Local folders" lost).
    if name == shown:
        return [gr.update()] * 8
    chosen = preset_choice(get_preset(name))
    zoo = chosen.origin == "Zoo"
    return (describe_preset(name), chosen.origin, gr.Dropdown(value=chosen.family, visible=zoo),
            gr.CheckboxGroup(choices=_family_experts(chosen.family), value=chosen.experts, visible=zoo),
            gr.Textbox(value=chosen.base, visible=not zoo), gr.Textbox(value=chosen.sources, visible=not zoo),
            name, _CHANGED)


def show_origin(value: str) -> tuple[Any, ...]:
    """The zoo's controls for "Zoo", the base and source text boxes for folders and Hub ids."""
    zoo = value == "Zoo"
    return (gr.Dropdown(visible=zoo), gr.CheckboxGroup(visible=zoo), gr.Textbox(visible=not zoo),
            gr.Textbox(visible=not zoo))
