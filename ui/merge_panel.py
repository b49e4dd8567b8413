"""Merge panel: a method (its explanation and formula from the registry), one weight slider per source, the method's
own parameters read from its declared Params (only those that apply are shown), a seed, and two ways to merge:
in memory at once (small models re-merge as sliders move) or streamed to a folder with a progress bar and cancel."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any

import gradio as gr

from merging.cancel import cancellable
from merging.methods import get_method, list_methods
from merging.methods.registry import Method, Param
from merging.settings import MergeSettings
from ui.export_panel import task_folders_text
from ui.hosting import HostConfig
from ui.session import Session
from ui.workspace import MoveResult, apply_move, has_own_control, merge_live, merge_to_folder, require_models

MAX_SOURCES = 8  # weight sliders made up front; the ones beyond the chosen sources stay hidden
# "hidden" keeps a control mounted but invisible: a control made visible=False is not in the page, and updates that
# show it can be lost when its tab mounts at the same moment.
HIDDEN = "hidden"
DEFAULT_METHOD = "ties"


def methods() -> list[Method]:
    return sorted(list_methods(), key=lambda m: m.name)


def method_help(method: Method) -> str:
    """One-line explanation and formula, as Markdown."""
    base = {"required": "needs the base model", "optional": "uses the base model when given",
            "ignored": "does not use the base model"}[method.base]
    random = " Random: the seed makes it reproducible." if method.random else ""
    weights = "" if method.weight is not None else " It has no per-model weight."
    return f"**{method.name}** — {method.explanation}\n\n`{method.formula}`\n\n*It {base}.{random}{weights}*"


def _same_meaning(a: Param, b: Param) -> bool:
    return a.kind == b.kind and param_range(a) == param_range(b) and a.default == b.default


@functools.cache
def control_keys() -> dict[tuple[str, str], str]:
    """(method, parameter) -> the key of the control showing it. Declarations of one meaning (kind, range and
    default alike, e.g. density) share a control; others get their own (slerp's t in [0, 1] is not nearswap's t in
    [0, 0.01]), so no control ever needs a new range and a value outside its old one."""
    keys: dict[tuple[str, str], str] = {}
    first: dict[str, list[tuple[str, Param]]] = {}
    for method in methods():
        for param in method.params:
            if not has_own_control(param):
                continue
            shared = next((key for key, other in first.get(param.name, []) if _same_meaning(other, param)), None)
            if shared is None:
                shared = param.name if param.name not in first else f"{param.name}-{method.name}"
                first.setdefault(param.name, []).append((shared, param))
            keys[(method.name, param.name)] = shared
    return keys


def param_specs() -> dict[str, Param]:
    """Control key -> the parameter declaration it shows (see control_keys)."""
    specs: dict[str, Param] = {}
    for (method, name), key in control_keys().items():
        specs.setdefault(key, get_method(method).param(name))
    return specs


def method_param_for(method: Method, key: str) -> Param | None:
    """The method's parameter a control key shows, or None."""
    return next((p for p in method.params if control_keys().get((method.name, p.name)) == key), None)


def params_by_name(method: str, values: dict[str, Any]) -> dict[str, Any]:
    """Control values (by key) -> the named method's parameters (by name, in declared order)."""
    return {name: values[key] for (owner, name), key in control_keys().items() if owner == method and key in values}


def _choice_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def param_range(param: Param) -> tuple[float, float] | None:
    """The slider range: the parameter's `ui_range` (the useful part of wide bounds, e.g. weight −1..2 of ±100),
    else its declared bounds; None (a number box) when unbounded or spanning orders of magnitude (a tolerance of
    1e-12..1e-2 has no useful slider steps)."""
    if param.ui_range is not None:
        return float(param.ui_range[0]), float(param.ui_range[1])
    if param.low is None or param.high is None or (param.low > 0 and param.high / param.low >= 1e6):
        return None
    return float(param.low), float(param.high)


def start_value(param: Param) -> Any:
    """The declared start for the page (`ui_start`: density 0.5, where density 1 would trim nothing), else the
    declared default; for a required parameter without either (slerp's t) the middle of its range."""
    if param.ui_start is not None:
        return param.ui_start
    if param.default is not None:
        return _choice_value(param.default) if param.kind == "choice" else param.default
    bounds = param_range(param)
    if bounds is None:
        return None
    middle = (bounds[0] + bounds[1]) / 2
    return round(middle) if param.kind == "int" else round(middle, 6)


def _step(param: Param, bounds: tuple[float, float]) -> float:
    if param.kind == "int":
        return 1
    span = bounds[1] - bounds[0]
    return 0.01 if span >= 1 else span / 100


def param_control(param: Param, key: str | None = None) -> gr.components.Component:
    common = {"label": param.name, "info": param.help, "elem_id": f"param-{key or param.name}", "visible": HIDDEN}
    if param.kind == "bool":
        return gr.Checkbox(value=bool(param.default), **common)
    if param.kind == "choice":
        choices = [_choice_value(c) for c in param.choices]
        return gr.Dropdown(choices, value=_choice_value(param.default), **common)
    bounds = param_range(param)
    if bounds is None:  # an open-ended tolerance: a number box, not a slider with made-up ends
        return gr.Number(value=param.default, **common)
    return gr.Slider(bounds[0], bounds[1], value=start_value(param), step=_step(param, bounds), **common)


def _within(value: Any, param: Param) -> bool:
    bounds = param_range(param)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return False
    return bounds is None or bounds[0] <= number <= bounds[1]


def _param_update(param: Param, value: Any) -> Any:
    update: dict[str, Any] = {"visible": True, "info": param.help, "value": value}
    bounds = param_range(param)
    if param.kind in ("float", "int") and bounds is not None:
        update.update(minimum=bounds[0], maximum=bounds[1], step=_step(param, bounds))
    return gr.update(**update)


def control_updates(method: Method, specs: dict[str, Param], current: dict[str, Any] | None = None,
                    previous: Method | None = None) -> list[Any]:
    """Show the method's parameters, explained and valued as it declares them; hide the others. `current` holds
    the controls' values by key: a kept fraction (density ↔ select_topk) carries over from the previous method when
    it fits, so switching ties → dare_ties keeps the density instead of resetting it to 'keep everything'; controls
    shared by one meaning keep their values anyway."""
    current = current or {}
    before = params_by_name(previous.name, current) if previous is not None else {}
    # a fraction of entries kept is one setting under several names (density, select_topk): carried over
    previous_fraction = previous.by_role("kept_fraction") if previous is not None else None
    kept = before.get(previous_fraction.name) if previous_fraction is not None else None
    updates = []
    for key in specs:
        param = method_param_for(method, key)
        if param is None:
            updates.append(gr.update(visible=HIDDEN))
            continue
        value = start_value(param)
        shared = previous is not None and method_param_for(previous, key) is not None
        fraction = kept if param.role == "kept_fraction" else None
        if shared and current.get(key) is not None:
            value = current[key]
        elif fraction is not None and _within(fraction, param):
            value = fraction
        updates.append(_param_update(param, value))
    return updates


def weight_range(method: Method) -> tuple[float, float] | None:
    """The weight sliders' range for a method; None when it has no per-model weight."""
    param = method.weight
    return None if param is None else (param_range(param) or (-1.0, 2.0))


def weight_control_updates(session: Session | None, method: Method, current: list[float] | None = None
                           ) -> list[Any]:
    """One slider per source, ranged as the method's `weight` declares; all hidden when it has none."""
    bounds = weight_range(method)
    sources = session.sources if session else []
    updates = []
    for i in range(MAX_SOURCES):
        if bounds is None or i >= len(sources):
            updates.append(gr.update(visible=HIDDEN))
            continue
        value = current[i] if current and i < len(current) and current[i] is not None else 0.5
        value = min(max(float(value), bounds[0]), bounds[1])
        updates.append(gr.update(visible=True, label=sources[i].label, minimum=bounds[0], maximum=bounds[1],
                                 value=value))
    return updates


def collect_settings(session: Session, method: str, seed: float | None, weights: list[float],
                     params: dict[str, Any]) -> MergeSettings:
    """The controls (`params` by control key) as settings, checked as the /merge endpoint checks its JSON
    (`to_dict()` is that JSON): only this method's parameters, one weight per source (none when the method has no
    per-model weight)."""
    return MergeSettings.from_controls(method, weights, params_by_name(method, params), seed, len(session.sources))


def settings_summary(settings: MergeSettings | dict, labels: list[str]) -> str:
    """The settings in one line: method · weights per source · parameters · seed (what a status line names)."""
    settings = MergeSettings.from_dict(settings) if isinstance(settings, dict) else settings
    parts = [f"**{settings.method}**"]
    if settings.weights and settings.spec.weight is not None:
        parts.append("weights: " + ", ".join(f"{label} {w:g}" for label, w in zip(labels, settings.weights)))
    if settings.params:
        parts.append(", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in settings.params.items()))
    if settings.spec.random:
        parts.append(f"seed {settings.seed}")
    return " · ".join(parts)


def merge_status(session: Session, where: str) -> str:
    """Which settings the current merge has (the status line under the controls)."""
    record = getattr(session, "merge", None)  # ui.merge_record.MergeRecord
    settings = record.settings if record is not None else session.merge_settings
    return merged_text(settings_summary(settings, session.labels), record, where, session.kind)


def merged_text(summary: str, record: Any, where: str, kind: str) -> str:
    """The status line of a merge: its settings' `summary`, where it went ("memory" or "folder"), how long it took
    and its number (`record`: a ui.merge_record.MergeRecord, or None), and which tabs use it (`kind`)."""
    seconds = getattr(record, "seconds", None)
    timing = f" in {seconds * 1000:.0f} ms" if where == "memory" and seconds else ""
    number = f" #{record.version}" if getattr(record, "version", None) else ""
    place = "in memory" if where == "memory" else "to the session's folder"
    return (f"✓ Merged with {summary} ({place}{timing}; the current merge{number}). "
            f"{'Classify' if kind == 'classifier' else 'Chat'}, Evaluate and Export use this model.")


def error_status(session: Session | None, message: str) -> str:
    """An error where the merge status goes, saying which merge (if any) is still the current one."""
    text = f"**⚠ {message}**"
    if session is not None and session.recipe is not None and session.merge_settings is not None:
        text += ("\n\nThe current merge is still the previous one: "
                 f"{settings_summary(session.merge_settings, session.labels)}.")
    return text


def run_merge(session: Session, config: HostConfig, raw_settings: dict, progress: Any = None) -> str:
    """/merge: in memory when live merging is on, else streamed to a folder."""
    require_models(session)
    settings = MergeSettings.from_dict(raw_settings)
    if session.live is not None:
        merge_live(session, settings)
        return merge_status(session, "memory")
    return run_merge_to_folder(session, config, raw_settings, "merged", progress)


def follow_move(session: Session, method: str, seed: float | None, weights: list[float],
                params: dict[str, Any], stamp: float | None) -> str | None:
    """A control moved (the page's live re-merge): the values the controls show (`params` by control key) merged
    in memory by workspace.apply_move, worded for the status line; where these models merge to a folder, the
    settings only. None when a later move has been merged already (`stamp`: see workspace.newest_move)."""
    moved = apply_move(session, method, weights, params_by_name(method, params), seed, stamp)
    return None if moved is None else move_status(moved)


def move_status(moved: MoveResult) -> str:
    """The status line after a control move (workspace.apply_move's result)."""
    summary = settings_summary(moved.settings, moved.labels)
    if moved.record is None:
        return f"*Settings changed ({summary}); these models merge to a folder: press **Merge** to apply them.*"
    return merged_text(summary, moved.record, "memory", moved.kind)


def merge_if_none(session: Session, config: HostConfig, progress: Any = None) -> str | None:
    """Nothing merged yet (a visitor went straight to Chat or Evaluate): merge what the Merge tab shows, the
    preset's start. Returns the merge's status line, or None when there was a merge already (or no models)."""
    if session.recipe is None and session.merged_path is None and session.base is not None \
            and session.merge_settings is not None:
        return run_merge(session, config, session.merge_settings.to_dict(), progress)
    return None


def run_merge_to_folder(session: Session, config: HostConfig, raw_settings: dict, name: str = "merged",
                        progress: Any = None) -> str:
    """/merge_to_folder: stream with the engine to ./models/merged/<session>/<name>."""
    require_models(session)
    settings = MergeSettings.from_dict(raw_settings)
    started = time.perf_counter()

    def step(fraction: float, text: str) -> None:
        if progress is not None:
            progress(fraction, desc=text)

    with cancellable(session.cancel):  # the engine checks between tensors; this reaches inside a method's loop
        out = merge_to_folder(session, config, settings, name or "merged", progress=step)
    seconds = time.perf_counter() - started
    shown = out.relative_to(config.models_dir.parent) if out.is_relative_to(config.models_dir.parent) else out
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
    shown_method: gr.State
    stamp: gr.Number

    @property
    def controls(self) -> list[gr.components.Component]:
        return [self.method, self.seed, *self.weights, *self.params.values()]


def build(config: HostConfig) -> MergePanel:
    specs = param_specs()
    names = [m.name for m in methods()]
    default = DEFAULT_METHOD if DEFAULT_METHOD in names else names[0]
    default_method = get_method(default)
    with gr.Row():
        method = gr.Dropdown(names, value=default, label="Method", elem_id="merge-method", scale=1)
        help_md = gr.Markdown(method_help(default_method), elem_id="method-help")
    low, high = weight_range(default_method) or (-1.0, 2.0)
    with gr.Row(elem_id="weights-row"):
        weights = [gr.Slider(low, high, value=0.5, step=0.01, label=f"model {i + 1}", elem_id=f"weight-{i}",
                             info="weight: how much of this model's task vector goes in",
                             visible=HIDDEN, min_width=200) for i in range(MAX_SOURCES)]
    with gr.Row(elem_id="params-row"):
        params = {key: param_control(param, key) for key, param in specs.items()}
    with gr.Row(equal_height=True):
        seed = gr.Number(0, precision=0, label="Seed (random methods)", elem_id="merge-seed", min_width=120)
        merge = gr.Button("Merge", variant="primary", elem_id="merge-button")
        folder_name = gr.Textbox("merged", label="Folder name", scale=1, elem_id="merge-folder-name")
        merge_folder = gr.Button("Merge to folder", elem_id="merge-folder")
        cancel = gr.Button("Cancel", variant="stop", elem_id="merge-cancel")
    status = gr.Markdown(elem_id="merge-status")
    settings = gr.JSON(visible=False, elem_id="merge-settings")
    stamp = gr.Number(0, visible=False)  # when the browser sent a control move (set by the event's js)
    shown_method = gr.State(default)  # the method whose controls are shown (values carry over on a switch)
    # Initial visibility, ranges and values for the default method.
    for key, control in params.items():
        param = method_param_for(default_method, key)
        control.visible = True if param is not None else HIDDEN
        if param is not None and isinstance(control, gr.Slider) and param_range(param):
            control.minimum, control.maximum = param_range(param)
            control.value, control.info = start_value(param), param.help
    return MergePanel(method, help_md, weights, params, seed, merge, merge_folder, folder_name, cancel, status,
                      settings, shown_method, stamp)


def weight_updates(session: Session | None, values: bool = True) -> list[Any]:
    """One visible slider per source, labelled (and, with `values`, set to the session's starting weights)."""
    settings = session.merge_settings if session else None
    method = settings.spec if settings else get_method(DEFAULT_METHOD)
    updates = weight_control_updates(session, method, settings.weights if settings else None)
    if not values:
        updates = [gr.update(**{k: v for k, v in u.items() if k != "value"}) for u in updates]
    return updates


def session_control_updates(session: Session, specs: dict[str, Param]) -> list[Any]:
    """Method, its help, weights and parameters as the session's settings say (after Check models, or when a sweep
    point is kept), and the shown-method state."""
    settings = session.merge_settings
    return settings_control_updates(session, settings or MergeSettings(DEFAULT_METHOD, []), specs)


def settings_control_updates(session: Session, settings: MergeSettings, specs: dict[str, Param]) -> list[Any]:
    """[method, help, *weights, *params, shown method] set to `settings` (values not in it: the declared ones)."""
    method = settings.spec
    params = control_updates(method, specs)
    for i, key in enumerate(specs):
        param = method_param_for(method, key)
        if param is not None and param.name in settings.params:
            value = settings.params[param.name]
            params[i] = _param_update(param, _choice_value(value) if param.kind == "choice" else value)
    weights = weight_control_updates(session, method, settings.weights or None)
    return [gr.update(value=method.name), method_help(method), *weights, *params, method.name]


def method_switch_updates(session: Session | None, name: str, previous: str | None, weights: list[float],
                          params: dict[str, Any], specs: dict[str, Param]) -> list[Any]:
    """Another method chosen: [help, *weight sliders, *parameter controls, shown method, pending values], each
    control re-ranged and valued as the new method declares it, shared values and a kept fraction carried over
    from `previous` (control_updates). Both methods are looked up here, once."""
    method = get_method(name)
    before = get_method(previous) if previous else None
    updates = [*weight_control_updates(session, method, weights), *control_updates(method, specs, params, before)]
    return [method_help(method), *updates, method.name, pending_values(updates)]


def pending_values(updates: list[Any]) -> list[Any]:
    """The values in control updates, to be set again by a second event: a slider given a new range and a value in
    one update keeps its old value when the new one lies outside its old range (slerp's t after nearswap's)."""
    return [u.get("value") if isinstance(u, dict) and u.get("visible") is True else None for u in updates]


def apply_values(values: list[Any] | None) -> list[Any]:
    return [gr.update() if v is None else gr.update(value=v) for v in values or []]
