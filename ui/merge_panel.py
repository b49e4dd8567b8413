"""Merge panel: a method (its explanation and formula from the registry), one weight slider per source, the method's
own parameters read from its declared Params (only those that apply are shown), a seed, and two ways to merge:
in memory at once (small models re-merge as sliders move) or streamed to a folder with a progress bar and cancel."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import gradio as gr

from merging.methods import get_method, list_methods
from merging.methods.registry import Method, Param
from ui.hosting import HostConfig
from ui.session import Session
from ui.workspace import HIDDEN_PARAMS, MergeSettings, merge_live, merge_to_folder, require_models

MAX_SOURCES = 8  # weight sliders made up front; the ones beyond the chosen sources stay hidden
# "hidden" keeps a control mounted but invisible: a control made visible=False is not in the page, and updates that
# show it can be lost when its tab mounts at the same moment.
HIDDEN = "hidden"
# Ranges for parameters the registry leaves unbounded (the recipe accepts any value; a slider needs ends).
SLIDER_RANGES = {"weight": (-1.0, 2.0), "lambda": (0.0, 2.0), "scale": (0.0, 2.0), "t": (0.0, 1.0)}
DEFAULT_METHOD = "ties"


def methods() -> list[Method]:
    return sorted(list_methods(), key=lambda m: m.name)


def method_help(name: str) -> str:
    """One-line explanation and formula, as Markdown."""
    method = get_method(name)
    base = {"required": "needs the base model", "optional": "uses the base model when given",
            "ignored": "does not use the base model"}[method.base]
    random = " Random: the seed makes it reproducible." if method.random else ""
    return f"**{method.name}** — {method.explanation}\n\n`{method.formula}`\n\n*It {base}.{random}*"


def param_specs() -> dict[str, Param]:
    """Every parameter some method declares (first declaration wins for the control's range and kind)."""
    specs: dict[str, Param] = {}
    for method in methods():
        for param in method.params:
            if param.name not in HIDDEN_PARAMS:
                specs.setdefault(param.name, param)
    return specs


def _choice_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _slider_range(param: Param) -> tuple[float, float]:
    low, high = SLIDER_RANGES.get(param.name, (0.0, 2.0 if param.kind == "float" else 100.0))
    return (param.low if param.low is not None else low, param.high if param.high is not None else high)


def param_control(param: Param) -> gr.components.Component:
    label = f"{param.name}"
    common = {"label": label, "info": param.help, "elem_id": f"param-{param.name}", "visible": HIDDEN}
    if param.kind == "bool":
        return gr.Checkbox(value=bool(param.default), **common)
    if param.kind == "choice":
        choices = [_choice_value(c) for c in param.choices]
        return gr.Dropdown(choices, value=_choice_value(param.default), **common)
    low, high = _slider_range(param)
    step = 1 if param.kind == "int" else 0.01
    default = param.default if param.default is not None else low
    return gr.Slider(low, high, value=default, step=step, **common)


def control_updates(method_name: str, specs: dict[str, Param]) -> list[Any]:
    """Show the method's parameters (at its defaults), hide the others."""
    method = get_method(method_name)
    updates = []
    for name in specs:
        param = method.param(name)
        if param is None:
            updates.append(gr.update(visible=HIDDEN))
        elif param.default is None:
            updates.append(gr.update(visible=True))
        elif param.kind == "choice":
            updates.append(gr.update(visible=True, value=_choice_value(param.default)))
        else:
            updates.append(gr.update(visible=True, value=param.default))
    return updates


def collect_settings(session: Session, method: str, seed: float | None, weights: list[float],
                     params: dict[str, Any]) -> dict[str, Any]:
    """The controls as the JSON the /merge endpoint takes: only this method's parameters, one weight per source."""
    chosen = get_method(method)
    n = len(session.sources)
    kept = {k: v for k, v in params.items() if chosen.param(k) is not None and v is not None}
    return MergeSettings(method, [float(w) for w in weights[:n]], kept, int(seed or 0)).to_dict()


def merge_status(session: Session, where: str) -> str:
    recipe = session.recipe
    weights = ", ".join(f"{s.label} {w:g}" for s, w in zip(session.sources, session.merge_settings.weights))
    params = ", ".join(f"{k}={v}" for k, v in session.merge_settings.params.items())
    timing = f" in {session.last_merge_ms:.0f} ms" if where == "memory" and session.last_merge_ms else ""
    place = "in memory" if where == "memory" else "to the session's folder"
    detail = f" · weights: {weights}" if weights else ""
    return (f"✓ Merged with **{recipe.merge_method}** {place}{timing}{detail}"
            f"{' · ' + params if params else ''} · seed {session.merge_settings.seed}. "
            f"{'Classify' if session.kind == 'classifier' else 'Chat'}, Evaluate and Export now use this model.")


def run_merge(session: Session, config: HostConfig, raw_settings: dict, progress: Any = None) -> str:
    """/merge: in memory when live merging is on, else streamed to a folder."""
    require_models(session)
    settings = MergeSettings.from_dict(raw_settings)
    if session.live is not None:
        merge_live(session, settings)
        return merge_status(session, "memory")
    return run_merge_to_folder(session, config, raw_settings, "merged", progress)


def run_merge_to_folder(session: Session, config: HostConfig, raw_settings: dict, name: str = "merged",
                        progress: Any = None) -> str:
    """/merge_to_folder: stream with the engine to ./models/merged/<session>/<name>."""
    require_models(session)
    settings = MergeSettings.from_dict(raw_settings)
    started = time.perf_counter()

    def step(fraction: float, text: str) -> None:
        if progress is not None:
            progress(fraction, desc=text)

    out = merge_to_folder(session, config, settings, name or "merged", progress=step)
    seconds = time.perf_counter() - started
    shown = out.relative_to(config.models_dir.parent) if out.is_relative_to(config.models_dir.parent) else out
    from ui.export_panel import task_folders_text

    return (merge_status(session, "folder") + f"\n\nSaved to `{shown}` in {seconds:.1f} s."
            + task_folders_text(out, shown))


# --- components ----------------------------------------------------------------------------------------------------

@dataclass
class MergePanel:
    method: gr.Dropdown
    help: gr.Markdown
    weights: list[gr.Slider]
    params: dict[str, gr.components.Component]
    seed: gr.Number
    merge: gr.Button
    merge_folder: gr.Button
    folder_name: gr.Textbox
    cancel: gr.Button
    status: gr.Markdown
    settings: gr.JSON

    @property
    def controls(self) -> list[gr.components.Component]:
        return [self.method, self.seed, *self.weights, *self.params.values()]


def build(config: HostConfig) -> MergePanel:
    specs = param_specs()
    names = [m.name for m in methods()]
    default = DEFAULT_METHOD if DEFAULT_METHOD in names else names[0]
    with gr.Row():
        method = gr.Dropdown(names, value=default, label="Method", elem_id="merge-method", scale=1)
        help_md = gr.Markdown(method_help(default), elem_id="method-help")
    gr.Markdown("**Weight of each source model** (how much of its task vector goes in)")
    with gr.Row(elem_id="weights-row"):
        weights = [gr.Slider(-1.0, 2.0, value=0.5, step=0.05, label=f"model {i + 1}", elem_id=f"weight-{i}",
                             visible=HIDDEN, min_width=200) for i in range(MAX_SOURCES)]
    with gr.Row(elem_id="params-row"):
        params = {name: param_control(param) for name, param in specs.items()}
    with gr.Row(equal_height=True):
        seed = gr.Number(0, precision=0, label="Seed (random methods)", elem_id="merge-seed", min_width=120)
        merge = gr.Button("Merge", variant="primary", elem_id="merge-button")
        folder_name = gr.Textbox("merged", label="Folder name", scale=1, elem_id="merge-folder-name")
        merge_folder = gr.Button("Merge to folder", elem_id="merge-folder")
        cancel = gr.Button("Cancel", variant="stop", elem_id="merge-cancel")
    status = gr.Markdown(elem_id="merge-status")
    settings = gr.JSON(visible=False, elem_id="merge-settings")
    # Initial visibility for the default method.
    default_method = get_method(default)
    for name, control in params.items():
        control.visible = True if default_method.param(name) is not None else HIDDEN
    return MergePanel(method, help_md, weights, params, seed, merge, merge_folder, folder_name, cancel, status,
                      settings)


def weight_updates(session: Session | None, values: bool = True) -> list[Any]:
    """One visible slider per source, labelled (and, with `values`, set to the session's starting weights)."""
    sources = session.sources if session else []
    start = session.merge_settings.weights if session and session.merge_settings else []
    updates = []
    for i in range(MAX_SOURCES):
        if i < len(sources):
            value = start[i] if i < len(start) else 0.5
            updates.append(gr.update(visible=True, label=f"{sources[i].label}", **({"value": value} if values else {})))
        else:
            updates.append(gr.update(visible=HIDDEN))
    return updates


def session_control_updates(session: Session, specs: dict[str, Param]) -> list[Any]:
    """Method, its help, weights and parameters as the session's starting settings say (after Check models)."""
    settings = session.merge_settings
    method = settings.method if settings else DEFAULT_METHOD
    params = control_updates(method, specs)
    if settings:
        for i, name in enumerate(specs):
            if name in settings.params:
                value = settings.params[name]
                params[i] = gr.update(visible=True, value=_choice_value(value) if isinstance(value, bool) and
                                      get_method(method).param(name).kind == "choice" else value)
    return [gr.update(value=method), method_help(method), *weight_updates(session), *params]
