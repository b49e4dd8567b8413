"""ui.fields.guard_inputs on components whose value gradio checks against a data model before any preprocess (a
chat history, a file) and on textboxes: a value of the wrong shape is a gr.Error naming the field and saying what to
send; a right value reads exactly as without the guard, and the API description does not change."""

from __future__ import annotations

import gradio as gr
import pytest

from ui.fields import guard_inputs

HISTORY = [{"role": "user", "content": [{"type": "text", "text": "3+4="}]},
           {"role": "assistant", "content": [{"type": "text", "text": "7"}]}]


@pytest.fixture
def guarded():
    with gr.Blocks() as demo:
        chat = gr.Chatbot(label="Merged model")
        task_file = gr.File(label="Task file", type="filepath")
        text = gr.Textbox(label="Message")
    plain = {"chat": gr.Chatbot(), "file": gr.File(type="filepath")}
    guard_inputs(demo)
    return chat, task_file, text, plain


def _refusal(check, value) -> str:
    with pytest.raises(gr.Error) as error:
        check(value)
    return error.value.message


@pytest.mark.parametrize("value", [[[[[]]]], [["3+4=", "7"]], [{"role": "user", "content": "hi"}], "3+4=", 7, {}])
def test_a_chat_history_of_another_shape_says_what_to_send(guarded, value):
    chat, *_ = guarded
    message = _refusal(chat.data_model.model_validate, value)
    assert message.startswith('Merged model: send the conversation as a list of messages, each {"role"'), message
    assert '"content": [{"type": "text", "text": "..."}]' in message
    assert isinstance(value, str) or "3+4=" not in message  # a list or object sent is never repeated back


@pytest.mark.parametrize("value", [[[[[]]]], "tasks.jsonl", {"path": "/etc/passwd"}, True])
def test_a_file_of_another_shape_says_what_to_send(guarded, value):
    _, task_file, _, _ = guarded
    message = _refusal(lambda v: task_file.data_model.model_validate(v, context={"validate_meta": True}), value)
    assert message.startswith("Task file: send a file (in Python: gradio_client.handle_file("), message
    assert "passwd" not in message


def test_right_values_read_as_without_the_guard_and_the_api_is_unchanged(guarded):
    chat, task_file, text, plain = guarded
    ours = chat.preprocess(chat.data_model.model_validate(HISTORY))
    assert ours == plain["chat"].preprocess(plain["chat"].data_model.model_validate(HISTORY))
    assert ours[1]["content"][0]["text"] == "7"
    assert chat.api_info() == plain["chat"].api_info() and task_file.api_info() == plain["file"].api_info()
    assert chat.data_model.__name__ == "ChatbotDataMessages"
    assert text.preprocess("3+4=") == "3+4=" and text.preprocess(7) == "7"


def test_a_textbox_refuses_a_list_or_an_object(guarded):
    *_, text, _ = guarded
    assert _refusal(text.preprocess, [["3+4="]]) == "Message: send text, not a list in another shape."
    assert _refusal(text.preprocess, {"a": 1}) == "Message: send text, not an object in another shape."
