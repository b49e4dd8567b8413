"""Chat panel: the merged model and a source model of your choice answer the same message, streamed side by side.
Generation settings; on a GPU host 8-bit / 4-bit loading (bitsandbytes) for models merged to a folder."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from inference import stream_chat
from merging.errors import MergeLabError
from ui.hosting import HostConfig
from ui.models_panel import suggested_prompts
from ui.resources import session_tokenizer, shared_model
from ui.session import Session
from ui.workspace import merged_chat_model, require_models

NO_COMPARISON = "(none)"
QUANTIZATIONS = ("none", "8bit", "4bit")
# Used only when the default preset suggests no prompts and has no task file: the tiny LM zoo's kinds of prompt
# (kanji arithmetic, a kanji numeral, digits, strings), the composite first as in the tiny preset's own list.
EXAMPLES = ["七十-六=", "四十二", "3+4=", "reverse abcd"]

History = list[dict[str, Any]]


@dataclass
class GenerationSettings:
    max_new_tokens: int = 48
    temperature: float = 0.0
    top_p: float = 1.0
    quantization: str = "none"

    def check(self, config: HostConfig) -> None:
        if not 1 <= int(self.max_new_tokens) <= 2048:
            raise MergeLabError("Max new tokens must be between 1 and 2048.")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise MergeLabError("Temperature must be ≥ 0 and top-p in (0, 1].")
        if self.quantization not in QUANTIZATIONS:
            raise MergeLabError(f"Quantization must be one of {', '.join(QUANTIZATIONS)}.")
        if self.quantization != "none" and not config.gpu:
            raise MergeLabError("8-bit / 4-bit loading needs a GPU host; choose 'none' here.")

    @property
    def quant(self) -> str | None:
        return None if self.quantization == "none" else self.quantization


def compare_choices(session: Session | None) -> list[str]:
    if session is None or session.base is None:
        return [NO_COMPARISON]
    return [NO_COMPARISON, *(s.label for s in [session.base, *session.sources])]


def default_comparison(session: Session | None) -> str:
    """The source answering beside the merge when Chat opens: the first expert (a source that cannot answer what
    the merge can is the point of the comparison), or none before models are chosen."""
    if session is None or not session.sources:
        return NO_COMPARISON
    return session.sources[0].label


MERGE_TAG = re.compile(r"\n\n— \*merge #\d+\*$")
ANSWER_TAG = re.compile(r"\n\n— \*[^*\n]+\*$")  # a merge's or a source's label under an answer


def tagged(answer: str, version: int) -> str:
    """The merged model's answer labelled with the merge that produced it (shown under the answer)."""
    return f"{answer}\n\n— *merge #{version}*"


def tagged_by(answer: str, label: str) -> str:
    """A source's answer labelled with the source that gave it: the pane beside the merge can switch sources
    mid-conversation, and each answer keeps saying whose it is."""
    return f"{answer}\n\n— *{label.replace('*', '')}*"


def untagged(history: History) -> History:
    """The conversation as the model sees it: without the labels under the answers."""
    return [{**m, "content": ANSWER_TAG.sub("", m["content"])}
            if m.get("role") == "assistant" and isinstance(m.get("content"), str) else m for m in history]


def _model_for(session: Session, label: str, quant: str | None):
    """(model, tokenizer) for a source label; models come from the shared cache, tokenizers are the session's."""
    source = session.source_by_label(label)
    if source is None:
        raise MergeLabError(f"No source model named {label!r}: pick one of {', '.join(compare_choices(session)[1:])}.")
    loaded = shared_model(source.path, quant)
    return loaded.model, session_tokenizer(session, source.path)


def _merged(session: Session, quant: str | None):
    """(model, tokenizer) of the current merge: the session's own model for an in-memory merge, else its folder."""
    record = session.merge
    in_memory = record is not None and record.in_memory
    loaded = merged_chat_model(session, None if in_memory else quant)
    if in_memory:
        return loaded.model, loaded.tokenizer
    return loaded.model, session_tokenizer(session, record.folder)


def chat(
    session: Session,
    config: HostConfig,
    message: str,
    merged_history: History | None,
    compare_history: History | None,
    compare_label: str,
    settings: GenerationSettings,
) -> Iterator[tuple[History, History]]:
    """/chat: stream (merged conversation, comparison conversation); both grow as tokens arrive."""
    require_models(session)
    settings.check(config)
    message = (message or "").strip()
    if not message:
        raise MergeLabError("Type a message first.")
    merged_model, merged_tok = _merged(session, settings.quant)
    version = session.merge.version
    merged_history = list(merged_history or [])
    compare_history = list(compare_history or [])
    kwargs = {"max_new_tokens": int(settings.max_new_tokens), "temperature": float(settings.temperature),
                  "top_p": float(settings.top_p), "stop_event": session.stop_chat}
    session.stop_chat.clear()
    streams: dict[str, Iterator[str]] = {
        "merged": stream_chat(merged_model, merged_tok, [*untagged(merged_history), _user(message)], **kwargs)}
    merged_history += [_user(message), _assistant("")]
    if compare_label and compare_label != NO_COMPARISON:
        model, tok = _model_for(session, compare_label, settings.quant)
        streams["compare"] = stream_chat(model, tok, [*untagged(compare_history), _user(message)], **kwargs)
        compare_history += [_user(message), _assistant("")]
    targets = {"merged": merged_history, "compare": compare_history}
    # Round-robin over both streams so the two answers grow together.
    while streams:
        for key in list(streams):
            try:
                text = next(streams[key])
                targets[key][-1] = _assistant(tagged(text, version) if key == "merged" else tagged_by(text, compare_label))
            except StopIteration:
                del streams[key]
        yield merged_history, compare_history


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


# --- components ----------------------------------------------------------------------------------------------------

@dataclass
class ChatPanel:
    merged: gr.Chatbot
    compare: gr.Chatbot
    compare_label: gr.Dropdown
    message: gr.Textbox
    send: gr.Button
    stop: gr.Button
    clear: gr.Button
    max_new_tokens: gr.Slider
    temperature: gr.Slider
    top_p: gr.Slider
    quantization: gr.Radio
    status: gr.Markdown  # errors in words, where the chat is (not a pill over the panes)

    @property
    def settings_inputs(self) -> list[gr.components.Component]:
        return [self.max_new_tokens, self.temperature, self.top_p, self.quantization]


def build(config: HostConfig) -> ChatPanel:
    with gr.Row():
        merged = gr.Chatbot(label="Merged model", elem_id="chat-merged", height=320)
        compare = gr.Chatbot(label="Source model", elem_id="chat-compare", height=320)
    with gr.Row():
        message = gr.Textbox(label="Message", placeholder="Ask both models, e.g. 三+四=", show_label=False, scale=4,
                             elem_id="chat-message")
        # Custom values: API clients name a source without the page having refreshed the choices first.
        compare_label = gr.Dropdown([NO_COMPARISON], value=NO_COMPARISON, label="Answer beside it",
                                    allow_custom_value=True,
                                    elem_id="chat-compare-model", scale=1)
    with gr.Row():
        send = gr.Button("Send", variant="primary", elem_id="chat-send")
        stop = gr.Button("Stop", elem_id="chat-stop")
        clear = gr.Button("Clear", elem_id="chat-clear")
    # The default preset's own prompts (its starting merge answers them well); the zoo's otherwise.
    gr.Examples(suggested_prompts() or EXAMPLES, inputs=message, label="Try", elem_id="chat-examples")
    status = gr.Markdown(elem_id="chat-status")
    with gr.Accordion("Generation settings", open=False), gr.Row():
        max_new_tokens = gr.Slider(1, 512, value=48, step=1, label="Max new tokens", elem_id="chat-max-tokens")
        temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.05, label="Temperature (0 = greedy)",
                                elem_id="chat-temperature")
        top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p", elem_id="chat-top-p")
        quantization = gr.Radio(list(QUANTIZATIONS), value="none", label="Load in (GPU host only)",
                                interactive=config.gpu, elem_id="chat-quantization",
                                info=None if config.gpu else "8-bit / 4-bit needs a GPU; this host has none.")
    return ChatPanel(merged, compare, compare_label, message, send, stop, clear, max_new_tokens, temperature, top_p,
                     quantization, status)
