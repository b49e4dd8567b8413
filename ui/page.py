"""The page: one tab per panel, the per-session state, and the events between them. Every action has an api_name,
so gradio_client can drive everything a person can (see README "API")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from merging.settings import MergeSettings
from ui import (
    chat_panel,
    classify_panel,
    evaluate_panel,
    export_panel,
    interference_panel,
    learn_panel,
    merge_panel,
    models_panel,
)
from ui.feedback import error_markdown, guarded, in_place_error, take_error, user_message
from ui.fields import guard_inputs
from ui.hosting import HostConfig
from ui.resources import on_gpu
from ui.session import FreshSession, Session, close_session, new_session

TITLE = "MergeLab"
# Pre-flights at once across sessions: a check reads headers only, and its slow part (reading the sources for live
# merging) takes turns inside it (models_panel.LIVE_LOADS), so a check never waits for other sessions' loads.
PREFLIGHT_CONCURRENCY = 16
INTRO = ("Merge fine-tuned models with mergekit-compatible methods, chat with the result beside its sources, and see "
         "per-task agreement and interference. Runs offline on the built-in zoo.")
CSS = """
#preflight-report table { font-size: 0.85em; }
#merge-status, #eval-status { min-height: 1.5em; }
#lesson { font-size: 1.15em; }
"""


def _session(state: Session | None) -> Session:
    return state if state is not None else new_session()


def build_page(config: HostConfig) -> gr.Blocks:
    delete = (lambda s: close_session(s, config.models_dir)) if config.hosted else (lambda s: close_session(s))
    with gr.Blocks(title=TITLE, delete_cache=config.cache_sweep) as demo:
        # Freed when the tab closes (gradio keeps a closed tab's state an hour); no time limit while it is open,
        # since the session is changed in place and a time_to_live would count from its creation.
        state = gr.State(None, delete_callback=delete)
        # set after construction, which would deep-copy it into a Session already
        state.value = FreshSession(config.downloads_dir)
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        # Tabs render their children up front: the Models tab updates controls in Merge and Chat before they open.
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Models", id="models", elem_id="tab-models", render_children=True):
                models = models_panel.build(config)
            with gr.Tab("Merge", id="merge", elem_id="tab-merge", render_children=True) as merge_tab:
                merge = merge_panel.build(config)
            with gr.Tab("Chat", id="chat", elem_id="tab-chat", render_children=True) as chat_tab:
                chat = chat_panel.build(config)
            with gr.Tab("Classify", id="classify", elem_id="tab-classify", render_children=True,
                        visible=False) as classify_tab:  # shown for classifier families only
                classify = classify_panel.build(config)
            with gr.Tab("Evaluate", id="evaluate", elem_id="tab-evaluate", render_children=True):
                evaluate = evaluate_panel.build(config)
            with gr.Tab("Interference", id="interference", elem_id="tab-interference", render_children=True):
                interference = interference_panel.build(config)
            with gr.Tab("Lesson", id="lesson", elem_id="tab-lesson", render_children=True):
                lesson = interference_panel.build_lesson(config)  # one page for a class: experts to a score
            with gr.Tab("Learn", id="learn", elem_id="tab-learn", render_children=True) as learn_tab:
                learn = learn_panel.build(config)
            with gr.Tab("Export", id="export", elem_id="tab-export", render_children=True):
                export = export_panel.build(config)
        pending = gr.State([])  # control values to set once their ranges are in place (_then_values)
        page = Page(tabs, chat_tab, classify_tab, models, merge, chat, evaluate, pending)
        _wire(demo, config, state, page)
        _sync_on_open(merge_tab, state, merge, chat)
        classify_panel.wire(classify, state, config)
        evaluate_panel.wire(evaluate, state, config)
        interference_panel.wire(interference, state, config)
        interference_panel.wire_lesson(lesson, state, config, evaluate.per_task, evaluate.task_file)
        learn_panel.wire(learn, state, config)
        learn_panel.wire_sizing(learn_tab, learn, state)
        export_panel.wire(export, state, config)
    guard_inputs(demo)  # a value a control cannot take gets a message naming the control
    return demo


@dataclass
class Page:
    """The parts of the page that events between panels touch."""

    tabs: gr.Tabs
    chat_tab: gr.Tab
    classify_tab: gr.Tab
    models: models_panel.ModelsPanel
    merge: merge_panel.MergePanel
    chat: chat_panel.ChatPanel
    evaluate: evaluate_panel.EvaluatePanel
    pending: gr.State


def _sync_on_open(merge_tab: gr.Tab, state: gr.State, merge: merge_panel.MergePanel, chat: chat_panel.ChatPanel
                  ) -> None:
    # Opening Merge shows one slider per current source (the models may have been chosen through the API, or the
    # page-load check may still have been running when the page drew them). Values the user set are left alone.
    def sync(session: Session | None) -> list[Any]:
        if session is None or session.base is None:
            return [gr.update()] * (len(merge.weights) + 1)
        return [*merge_panel.weight_updates(session, values=False),
                gr.update(choices=chat_panel.compare_choices(session))]

    merge_tab.select(sync, state, [*merge.weights, chat.compare_label], api_visibility="private",
                     show_progress="hidden")


def _wire(demo: gr.Blocks, config: HostConfig, state: gr.State, page: Page) -> None:
    _wire_models(demo, config, state, page)
    switched = _wire_merge(config, state, page)
    _wire_live_merges(config, state, page, switched)
    send = _wire_chat(config, state, page)
    _wire_quick_start(config, state, page, send)  # one click: merge the checked preset, open Chat beside a source
    _wire_sweep_point(config, state, page)


def _merge_controls(page: Page) -> list[Any]:
    """Everything that shows the merge's settings: set together after Check models and when a sweep point is kept."""
    merge = page.merge
    return [merge.method, merge.help, *merge.weights, *merge.params.values(), merge.shown_method, page.pending]


def _wire_models(demo: gr.Blocks, config: HostConfig, state: gr.State, page: Page) -> None:
    """Models -> pre-flight (on Check models and on page load), then the merge controls, the chat choices and the
    sweep axes follow the chosen models."""
    models, merge, chat, evaluate = page.models, page.merge, page.chat, page.evaluate
    specs = merge_panel.param_specs()

    @guarded(config, "pre-flight", in_place=True)
    def preflight(session: Session, origin: str, family: str | None, experts: list[str] | None, base: str,
                  sources: str, preset: str | None,
                  progress: gr.Progress = gr.Progress(track_tqdm=True)) -> str:  # Hub downloads report via tqdm
        choice = models_panel.ModelsChoice(origin, family, list(experts or []), base or "", sources or "")
        return models_panel.check_models(_session(session), config, choice, preset, progress)

    sweep_axis_outputs = [evaluate.sweep_method, evaluate.sweep_rows, evaluate.sweep_weights, evaluate.sweep_columns,
                          evaluate.sweep_densities]

    def follow_models(session: Session) -> list[Any]:
        classifier = session.kind == "classifier"
        settings = session.merge_settings
        method = settings.method if settings and settings.method in evaluate_panel.sweep_methods() else "ties"
        choices, rows, columns = evaluate_panel.sweep_axes(session, method)
        sweep = [gr.update(value=method), gr.update(choices=choices, value=rows),
                 evaluate_panel.default_grid(method, rows),
                 gr.update(choices=[evaluate_panel.NO_AXIS, *choices], value=columns or evaluate_panel.NO_AXIS),
                 evaluate_panel.default_grid(method, columns)]
        return [*_with_pending(merge_panel.session_control_updates(session, specs)),
                gr.update(choices=chat_panel.compare_choices(session), value=chat_panel.default_comparison(session)),
                gr.update(visible=classifier), gr.update(visible=not classifier), "", *sweep]

    checked = models.check.click(preflight, [state, *models.choice_inputs, models.preset], models.report,
                                 api_name="preflight", concurrency_limit=PREFLIGHT_CONCURRENCY)
    checked.failure(in_place_error("pre-flight"), state, models.report, api_visibility="private",
                    show_progress="hidden")
    follow_outputs = [*_merge_controls(page), chat.compare_label, page.classify_tab, page.chat_tab, merge.status,
                      *sweep_axis_outputs]
    _then_values(checked.success(follow_models, state, follow_outputs, api_visibility="private"), page)

    # A visitor lands on the default preset already checked: the first click on Merge (or Merge and chat) merges.
    # On a first start the default family may still be building (app.py starts that build): the report shows its
    # progress bar until it is ready.
    def check_default(session: Session, progress: gr.Progress = gr.Progress()) -> str:
        return _check_default_preset(_session(session), config, progress)

    _then_values(demo.load(guarded(config, "pre-flight")(check_default), state, models.report,
                           api_visibility="private").success(follow_models, state, follow_outputs,
                                                             api_visibility="private"), page)


def _check_default_preset(session: Session, config: HostConfig, progress: Any) -> str:
    """Pre-flight of the preset a visitor lands on (the report, as check_models returns it)."""
    name = models_panel.default_preset_name()
    default = models_panel.preset_choice(models_panel.get_preset(name))
    return models_panel.check_models(session, config, default, name, progress=progress)


def _wire_merge(config: HostConfig, state: gr.State, page: Page) -> Any:
    """Merge: method switches, Merge and Merge to folder (errors in place), and cancel. Returns the method switch's
    last step (its controls set), which the live re-merge follows."""
    merge = page.merge
    specs = merge_panel.param_specs()
    n_weights = len(merge.weights)
    switched = _wire_method_switch(state, page)

    @guarded(config, "merge settings", in_place=True)
    def collect(session: Session, method: str, seed: float, *values: Any) -> dict:
        weights, params = values[:n_weights], dict(zip(specs, values[n_weights:]))
        return merge_panel.collect_settings(_session(session), method, seed, list(weights), params).to_dict()

    @guarded(config, "merge", in_place=True)
    def do_merge(session: Session, settings: dict, progress: gr.Progress = gr.Progress()) -> str:
        return merge_panel.run_merge(_session(session), config, settings, progress)

    @guarded(config, "merge to folder", in_place=True)
    def do_merge_folder(session: Session, settings: dict, name: str,
                        progress: gr.Progress = gr.Progress()) -> str:
        return merge_panel.run_merge_to_folder(_session(session), config, settings, name, progress)

    _collect_then_merge(state, page, merge.merge, collect, do_merge, [], "merge", "merge")
    folder_event = _collect_then_merge(state, page, merge.merge_folder, collect, on_gpu(do_merge_folder),
                                       [merge.folder_name], "merge to folder", "merge_to_folder")

    def cancel_merge(session: Session) -> str:
        if session is not None:
            session.cancel.set()
        return "Cancel requested: a merge in progress stops and leaves nothing behind."

    merge.cancel.click(cancel_merge, state, merge.status, cancels=[folder_event], api_name="cancel_merge")
    return switched


def _wire_method_switch(state: gr.State, page: Page) -> Any:
    """Another method: each control re-ranged and valued as the new method declares it; shared values carried over.
    Returns the step after which the controls show the new method's values."""
    merge = page.merge
    specs = merge_panel.param_specs()
    param_controls = list(merge.params.values())
    n_weights = len(merge.weights)

    def method_changed(session: Session | None, name: str, previous: str | None, *values: Any) -> list[Any]:
        weights, params = list(values[:n_weights]), dict(zip(specs, values[n_weights:]))
        return merge_panel.method_switch_updates(session, name, previous, weights, params, specs)

    return _then_values(merge.method.input(
        method_changed, [state, merge.method, merge.shown_method, *merge.weights, *param_controls],
        [merge.help, *merge.weights, *param_controls, merge.shown_method, page.pending], api_visibility="private",
        show_progress="hidden"), page)


def _collect_then_merge(state: gr.State, page: Page, button: gr.Button, collect: Any, run: Any,
                        extra_inputs: list[Any], action: str, api_name: str) -> Any:
    """A merge button: read the controls into settings, then `run` the merge with them; either step's error is
    written into the Merge tab's status line (`action` names the merge's). Returns the merge step's event."""
    merge = page.merge
    settings_step = button.click(collect, [state, *merge.controls], merge.settings, api_visibility="private")
    settings_step.failure(_merge_error("merge settings"), state, merge.status, api_visibility="private",
                          show_progress="hidden")
    merged = settings_step.success(run, [state, merge.settings, *extra_inputs], merge.status, api_name=api_name)
    merged.failure(_merge_error(action), state, merge.status, api_visibility="private", show_progress="hidden")
    return merged


def _merge_error(action: str) -> Any:
    return in_place_error(action, merge_panel.error_status)


def _wire_live_merges(config: HostConfig, state: gr.State, page: Page, switched: Any) -> None:
    """Live re-merges that follow every control move (the last move wins) and every method switch (`switched`: once
    the new method's values are in the controls), and the Evaluate tab's staleness note."""
    merge, evaluate = page.merge, page.evaluate
    specs = merge_panel.param_specs()
    param_controls = list(merge.params.values())
    n_weights = len(merge.weights)
    controls = [state, *merge.controls]

    def follow_controls(session: Session | None, method: str, seed: float, *values: Any) -> str | Any:
        """A control moved: re-merge with the values it shows. The browser stamps each move when it sends it
        (`stamp`, ms); a move older than the newest one this session has merged is dropped, so whichever order the
        queue runs them in, the last move wins."""
        session = _session(session)
        *values, stamp = values
        try:
            weights, params = values[:n_weights], dict(zip(specs, values[n_weights:]))
            status = merge_panel.follow_move(session, method, seed, list(weights), params, stamp)
            return gr.update() if status is None else status  # None: a later move has been merged already
        except Exception as error:  # noqa: BLE001 - shown where the sliders are, in words
            return merge_panel.error_status(session, user_message(error, config))

    # `input`: the user's own changes (drag moves, typed numbers; not the page's), `release`: a drag's end or a
    # number box left. always_last keeps one pending move per trigger; the stamps order what runs.
    sliders = [c for c in [*merge.weights, *param_controls] if isinstance(c, gr.Slider)]
    triggers = [c.input for c in [*merge.weights, *param_controls]] + [c.release for c in sliders]
    stamped = "(...args) => [...args.slice(0, -1), Date.now()]"  # stamped in the browser at sending time
    gr.on(triggers, follow_controls, [*controls, merge.stamp], merge.status, api_visibility="private",
          trigger_mode="always_last", show_progress="hidden", js=stamped)
    # A method switch is a move too: the merge follows it (or, for folder merges, the status says it is out of date).
    switched.then(follow_controls, [*controls, merge.stamp], merge.status, api_visibility="private",
                  show_progress="hidden", js=stamped)

    # An evaluation on screen says so when the merge it scored is no longer the current one.
    merge.status.change(evaluate_panel.stale_note, [state, evaluate.status], evaluate.status,
                        api_visibility="private", show_progress="hidden")


def _wire_sweep_point(config: HostConfig, state: gr.State, page: Page) -> None:
    """Keep a sweep point: its settings become the Merge tab's and the current merge."""
    merge, evaluate = page.merge, page.evaluate
    specs = merge_panel.param_specs()

    @guarded(config, "use sweep point", in_place=True)
    def use_point(session: Session, index: Any) -> list[Any]:
        session = _session(session)
        point = evaluate_panel.kept_point(session, index)
        status = merge_panel.run_merge(session, config, MergeSettings.from_dict(point.settings).to_dict())
        note = (f"✓ Kept {evaluate_panel.point_text(session.sweep, point)}: Merge, Chat and Export now use it "
                f"({merge_panel.settings_summary(session.merge_settings, session.labels)}).")
        return [note, status, *_with_pending(merge_panel.session_control_updates(session, specs))]

    used = evaluate.sweep_use.click(use_point, [state, evaluate.sweep_point],
                                    [evaluate.sweep_best, merge.status, *_merge_controls(page)],
                                    api_name="use_sweep_point")
    _then_values(used, page)
    used.failure(in_place_error("use sweep point"), state, evaluate.sweep_best, api_visibility="private",
                 show_progress="hidden")


def _with_pending(updates: list[Any]) -> list[Any]:
    """[method, help, *weights, *params, shown method] plus the values to set again (see _then_values)."""
    return [*updates, merge_panel.pending_values(updates[2:-1])]


def _then_values(event: Any, page: Page) -> Any:
    # Sliders take a new range and a value outside the old one in two steps: the range first, then the value.
    controls = [*page.merge.weights, *page.merge.params.values()]
    return event.then(merge_panel.apply_values, page.pending, controls, api_visibility="private", show_progress="hidden")


def _wire_chat(config: HostConfig, state: gr.State, page: Page) -> Any:
    """Chat: send (the button or Enter), stop and clear. Returns the send handler, which quick start reuses."""
    chat = page.chat
    send = on_gpu(_chat_sender(config))  # ZeroGPU on a Space; unchanged elsewhere
    inputs, outputs = _chat_inputs(state, page), _chat_outputs(page)
    sent = chat.send.click(send, inputs, outputs, api_name="chat")
    submitted = chat.message.submit(send, inputs, outputs, api_visibility="private")
    # A new message clears an earlier error line.
    gr.on([chat.send.click, chat.message.submit], lambda: "", None, chat.status, api_visibility="private",
          show_progress="hidden", queue=False)
    for event in (sent, submitted):
        event.failure(chat_error, state, [chat.status, chat.merged, chat.compare], api_visibility="private",
                      show_progress="hidden")

    def stop_chat(session: Session) -> None:
        if session is not None:
            session.stop_chat.set()

    chat.stop.click(stop_chat, state, None, cancels=[sent, submitted], api_visibility="private")
    chat.clear.click(lambda: ([], [], ""), None, [chat.merged, chat.compare, chat.status], api_visibility="private")
    return send


def _chat_inputs(state: gr.State, page: Page) -> list[Any]:
    chat = page.chat
    return [state, chat.message, chat.merged, chat.compare, chat.compare_label, *chat.settings_inputs]


def _chat_outputs(page: Page) -> list[Any]:
    return [page.chat.merged, page.chat.compare, page.chat.message]  # the /chat API's outputs


def _chat_sender(config: HostConfig) -> Any:
    """The chat handler: streams (merged pane, compared pane, cleared message box)."""

    @guarded(config, "chat", in_place=True)
    def send(session: Session, message: str, merged_history: list, compare_history: list, compare_label: str,
             max_new_tokens: float, temperature: float, top_p: float, quantization: str):
        session = _session(session)
        settings = chat_panel.GenerationSettings(int(max_new_tokens), float(temperature), float(top_p), quantization)
        merge_panel.merge_if_none(session, config)
        for merged_msgs, compare_msgs in chat_panel.chat(session, config, message, merged_history,
                                                         compare_history, compare_label, settings):
            yield merged_msgs, compare_msgs, ""

    return send


def chat_error(session: Session) -> list[Any]:
    """The chat's error in its status line; also settles both panes, so no error badge is left over them."""
    return [error_markdown(take_error(session, "chat") or "The chat failed."), gr.update(), gr.update()]


def _wire_quick_start(config: HostConfig, state: gr.State, page: Page, send: Any) -> None:
    """Merge and chat: merge the checked preset, open Chat beside a source, and ask the first suggested prompt."""
    models, merge, chat = page.models, page.merge, page.chat
    specs = merge_panel.param_specs()

    @guarded(config, "quick start", in_place=True)
    def quick_start(session: Session, progress: gr.Progress = gr.Progress()) -> list[Any]:
        session = _session(session)
        if session.base is None:  # the page-load check has not run (or failed): check the default preset now
            _check_default_preset(session, config, progress)
        status = merge_panel.run_merge(session, config, session.merge_settings.to_dict(), progress)
        prompts = models_panel.suggested_prompts() or chat_panel.EXAMPLES
        beside = session.sources[0].label
        note = f"✓ Merged. Chat is open: the merge answers on the left, **{beside}** (a source model) beside it."
        return [note, status, gr.Tabs(selected="chat"),
                gr.update(choices=chat_panel.compare_choices(session), value=beside), prompts[0],
                *_with_pending(merge_panel.session_control_updates(session, specs))]

    quick = models.quick.click(
        quick_start, state, [models.quick_status, merge.status, page.tabs, chat.compare_label, chat.message,
                             *_merge_controls(page)], api_name="quick_start")
    quick.failure(in_place_error("quick start"), state, models.quick_status, api_visibility="private",
                  show_progress="hidden")
    _then_values(quick, page)
    # …and the first suggested prompt is asked at once, so both answers are there when Chat opens.
    quick.success(send, _chat_inputs(state, page), _chat_outputs(page), api_visibility="private").failure(
        chat_error, state, [chat.status, chat.merged, chat.compare], api_visibility="private",
        show_progress="hidden")
