"""The page: one tab per panel, the per-session state, and the events between them. Every action has an api_name,
so gradio_client can drive everything a person can (see README "API")."""

from __future__ import annotations

from typing import Any

import gradio as gr

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
from ui.feedback import guarded
from ui.hosting import HostConfig
from ui.resources import on_gpu
from ui.session import FreshSession, Session, close_session, new_session

TITLE = "MergeLab"
INTRO = ("Merge fine-tuned models with mergekit-compatible methods, chat with the result beside its sources, and see "
         "per-task agreement and interference. Runs offline on the built-in zoo.")
CSS = """
#preflight-report table { font-size: 0.85em; }
#merge-status, #eval-status { min-height: 1.5em; }
"""


def _session(state: Session | None) -> Session:
    return state if state is not None else new_session()


def build_page(config: HostConfig) -> gr.Blocks:
    delete = (lambda s: close_session(s, config.models_dir)) if config.hosted else (lambda s: close_session(s))
    with gr.Blocks(title=TITLE) as demo:
        # Freed when the tab closes (gradio keeps a closed tab's state an hour); no time limit while it is open,
        # since the session is changed in place and a time_to_live would count from its creation.
        state = gr.State(None, delete_callback=delete)
        state.value = FreshSession()  # set after construction, which would deep-copy it into a Session already
        gr.Markdown(f"# {TITLE}\n{INTRO}")
        # Tabs render their children up front: the Models tab updates controls in Merge and Chat before they open.
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("Models", id="models", elem_id="tab-models", render_children=True):
                models = models_panel.build(config)
            with gr.Tab("Merge", id="merge", elem_id="tab-merge", render_children=True) as merge_tab:
                merge = merge_panel.build(config)
            with gr.Tab("Chat", id="chat", elem_id="tab-chat", render_children=True):
                chat = chat_panel.build(config)
            with gr.Tab("Classify", id="classify", elem_id="tab-classify", render_children=True):
                classify = classify_panel.build(config)
            with gr.Tab("Evaluate", id="evaluate", elem_id="tab-evaluate", render_children=True):
                evaluate = evaluate_panel.build(config)
            with gr.Tab("Interference", id="interference", elem_id="tab-interference", render_children=True):
                interference = interference_panel.build(config)
            with gr.Tab("Learn", id="learn", elem_id="tab-learn", render_children=True):
                learn = learn_panel.build(config)
            with gr.Tab("Export", id="export", elem_id="tab-export", render_children=True):
                export = export_panel.build(config)
        _wire(demo, config, state, models, merge, chat)
        _sync_on_open(merge_tab, state, merge, chat)
        classify_panel.wire(classify, state, config)
        evaluate_panel.wire(evaluate, state, config)
        interference_panel.wire(interference, state, config)
        learn_panel.wire(learn, state, config)
        export_panel.wire(export, state, config)
    return demo


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


def _wire(demo: gr.Blocks, config: HostConfig, state: gr.State, models: models_panel.ModelsPanel,
          merge: merge_panel.MergePanel, chat: chat_panel.ChatPanel) -> None:
    specs = merge_panel.param_specs()
    param_controls = list(merge.params.values())

    # --- Models -> pre-flight, then the merge controls and chat choices follow the chosen models ---------------------
    @guarded(config, "pre-flight")
    def preflight(session: Session, origin: str, family: str | None, experts: list[str] | None, base: str,
                  sources: str, preset: str | None,
                  progress: gr.Progress = gr.Progress(track_tqdm=True)) -> str:  # Hub downloads report via tqdm
        choice = models_panel.ModelsChoice(origin, family, list(experts or []), base or "", sources or "")
        return models_panel.check_models(_session(session), config, choice, preset, progress)

    def follow_models(session: Session) -> list[Any]:
        return [*merge_panel.session_control_updates(session, specs),
                gr.update(choices=chat_panel.compare_choices(session), value=chat_panel.NO_COMPARISON)]

    checked = models.check.click(preflight, [state, *models.choice_inputs, models.preset], models.report,
                                 api_name="preflight")
    follow_outputs = [merge.method, merge.help, *merge.weights, *param_controls, chat.compare_label]
    checked.success(follow_models, state, follow_outputs, api_visibility="private")

    # A visitor lands on the default zoo preset already checked: the first click on Merge merges.
    @guarded(config, "pre-flight")
    def check_default(session: Session) -> str:
        default = models_panel.preset_choice(models_panel.get_preset(models_panel.DEFAULT_PRESET))
        return models_panel.check_models(_session(session), config, default, models_panel.DEFAULT_PRESET)

    demo.load(check_default, state, models.report, api_visibility="private").success(
        follow_models, state, follow_outputs, api_visibility="private")

    # --- Merge ---------------------------------------------------------------------------------------------------
    def method_changed(name: str) -> list[Any]:
        return [merge_panel.method_help(name), *merge_panel.control_updates(name, specs)]

    merge.method.input(method_changed, merge.method, [merge.help, *param_controls], api_visibility="private")

    n_weights = len(merge.weights)

    @guarded(config, "merge settings")
    def collect(session: Session, method: str, seed: float, *values: Any) -> dict:
        weights, params = values[:n_weights], dict(zip(specs, values[n_weights:]))
        return merge_panel.collect_settings(_session(session), method, seed, list(weights), params)

    @guarded(config, "merge")
    def do_merge(session: Session, settings: dict, progress: gr.Progress = gr.Progress()) -> str:
        return merge_panel.run_merge(_session(session), config, settings, progress)

    @guarded(config, "merge to folder")
    def do_merge_folder(session: Session, settings: dict, name: str,
                        progress: gr.Progress = gr.Progress()) -> str:
        return merge_panel.run_merge_to_folder(_session(session), config, settings, name, progress)

    def live_if_small(session: Session, settings: dict) -> str | Any:
        # Slider moves re-merge only where live merging is on; big models wait for a button.
        if session is None or session.live is None:
            return gr.update()
        return do_merge(session, settings)

    do_merge_folder = on_gpu(do_merge_folder)
    controls = [state, *merge.controls]
    merge.merge.click(collect, controls, merge.settings, api_visibility="private").success(
        do_merge, [state, merge.settings], merge.status, api_name="merge")
    folder_event = merge.merge_folder.click(collect, controls, merge.settings, api_visibility="private").success(
        do_merge_folder, [state, merge.settings, merge.folder_name], merge.status, api_name="merge_to_folder")

    def cancel_merge(session: Session) -> str:
        if session is not None:
            session.cancel.set()
        return "Cancel requested: a merge in progress stops and leaves nothing behind."

    merge.cancel.click(cancel_merge, state, merge.status, cancels=[folder_event], api_name="cancel_merge")
    # `input` fires only on the user's own moves (drag or typed number), not when the page sets values.
    triggers = [c.input for c in [*merge.weights, *param_controls]]
    gr.on(triggers, collect, controls, merge.settings, api_visibility="private", trigger_mode="always_last",
          show_progress="hidden").success(live_if_small, [state, merge.settings], merge.status,
                                          api_visibility="private", show_progress="minimal")

    # --- Chat ----------------------------------------------------------------------------------------------------
    @guarded(config, "chat")
    def send(session: Session, message: str, merged_history: list, compare_history: list, compare_label: str,
             max_new_tokens: float, temperature: float, top_p: float, quantization: str):
        settings = chat_panel.GenerationSettings(int(max_new_tokens), float(temperature), float(top_p), quantization)
        for merged_msgs, compare_msgs in chat_panel.chat(_session(session), config, message, merged_history,
                                                         compare_history, compare_label, settings):
            yield merged_msgs, compare_msgs, ""

    send = on_gpu(send)  # ZeroGPU on a Space; unchanged elsewhere
    chat_inputs = [state, chat.message, chat.merged, chat.compare, chat.compare_label, *chat.settings_inputs]
    chat_outputs = [chat.merged, chat.compare, chat.message]
    sent = chat.send.click(send, chat_inputs, chat_outputs, api_name="chat")
    submitted = chat.message.submit(send, chat_inputs, chat_outputs, api_visibility="private")

    def stop_chat(session: Session) -> None:
        if session is not None:
            session.stop_chat.set()

    chat.stop.click(stop_chat, state, None, cancels=[sent, submitted], api_visibility="private")
    chat.clear.click(lambda: ([], []), None, [chat.merged, chat.compare], api_visibility="private")
