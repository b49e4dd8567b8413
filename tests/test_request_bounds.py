"""Every request bounded before work starts (issue 18): the worst forms a probe sent to each endpoint, through
gradio_client against a real server, each answered with a message that names the field (never "Something went
wrong", never a traceback, never the whole hostile input repeated back)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from merging.jsonl import MAX_FILE_BYTES
from merging.settings import MergeSettings
from tests.conftest import api_client
from tests.serving import close_app, launch_local

GOOD = {"method": "ties", "weights": [0.6, 0.4], "params": {"density": 0.5}, "seed": 0}


@pytest.fixture(scope="module")
def client(zoo_client):
    return zoo_client


def _refused(client, *args, api_name: str) -> str:
    with pytest.raises(AppError) as error:
        client.predict(*args, api_name=api_name)
    message = str(error.value)
    assert "Something went wrong" not in message and "Traceback" not in message, message
    return message


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ([0.5, 0.5], "must be a JSON object"),
        ("ties", "must be a JSON object"),
        ({**GOOD, "params": [0.5]}, "params must be an object"),
        ({**GOOD, "params": "density=0.5"}, "params must be an object"),
        ({**GOOD, "weights": "11"}, "weights must be a list of numbers"),
        ({**GOOD, "weights": [0.5, "x"]}, "weights[1] must be a number"),
        ({**GOOD, "weights": [0.5] * 1000}, "weights has 1000 entries"),
        ({**GOOD, "params": {"bogus": 1}}, "'bogus' is not a parameter of ties"),
        ({**GOOD, "params": {"__class__": 1}}, "'__class__' is not a parameter of ties"),
        ({**GOOD, "params": {"density": None}}, "params.density is null"),
        ({**GOOD, "params": {"density": [[[[0.5]]]]}}, "params.density must be a number"),
        ({**GOOD, "params": {"density": 10**400}}, "params.density is too large"),
        ({**GOOD, "params": {"density": 1e308}}, "density = 1e+308 is outside"),
        ({**GOOD, "seed": 1.5}, "seed must be a whole number"),
        ({**GOOD, "method": "x" * 5000}, "is not a merge method"),
        ({**GOOD, "extra": {"deep": [[[]]]}}, "unknown field(s) 'extra'"),
    ],
)
def test_merge_refuses_bad_settings_naming_the_field(client, settings, expected):
    message = _refused(client, settings, api_name="/merge")
    assert expected in message, message
    assert "x" * 100 not in message  # a huge input is never repeated back


def test_merge_to_folder_refuses_the_same_forms(client, tmp_path):
    message = _refused(client, {**GOOD, "weights": "11"}, "bad", api_name="/merge_to_folder")
    assert "weights must be a list of numbers" in message, message


def test_refused_settings_leave_the_current_merge_as_it_was(client):
    status = client.predict(GOOD, api_name="/merge")
    assert "Merged with **ties**" in status
    _refused(client, {**GOOD, "params": {"density": None}}, api_name="/merge")
    _file, exported = client.predict(api_name="/export_yaml")
    assert "density: 0.5" in exported


@pytest.mark.parametrize(
    ("rows", "expected"),
    [("0:1e308:1", "more points than can be counted"), ("0:1:1e-7", "10,000,001 points"),
     ("nan:1:0.1", "must be a finite number, not nan"), ("0:inf:0.1", "must be a finite number, not inf"),
     ("0:1:0", "step must be positive"), ("0:1:-0.1", "step must be positive"), ("0.1:1:0.05", "19 × 10 points; at most 64")],
)
def test_sweep_grids_are_counted_before_anything_is_built(client, rows, expected):
    message = _refused(client, "ties", rows, "0.1:1:0.1", "accuracy", 5, None, "weight", "density",
                       api_name="/sweep")
    assert expected in message, message


@pytest.mark.parametrize(("per_task", "expected"), [(1e308, "greater than maximum value"),
                                                   (-3, "less than minimum value"), (0, "less than minimum value")])
def test_sweep_and_evaluate_refuse_examples_per_task_out_of_range(client, per_task, expected):
    # The sliders' own bounds (gradio) answer first; per_task_field is the handlers' own check behind them.
    for args, api in (((None, per_task), "/evaluate"),
                      (("ties", "0.5", "0.5", "accuracy", per_task, None, "weight", "density"), "/sweep")):
        message = _refused(client, *args, api_name=api)
        assert expected in message and str(per_task) in message, message


def test_learn_refuses_a_deeply_nested_line(client, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"expert": "math", "prompt": "1+1="}\n' + "[" * 20_000 + "]" * 20_000 + "\n",
                       encoding="utf-8")
    message = _refused(client, "samerging", 1, 1, 0.05, 0.3, False, handle_file(str(prompts)), api_name="/learn")
    assert "prompts.jsonl:2" in message and "nested more than" in message, message


def test_learn_applies_the_evaluate_upload_size_limit(client, tmp_path):
    big = tmp_path / "big.jsonl"
    line = json.dumps({"expert": "math", "prompt": "1+1=" * 200}) + "\n"
    big.write_text(line * (MAX_FILE_BYTES // len(line) + 10), encoding="utf-8")
    assert big.stat().st_size > MAX_FILE_BYTES
    learn = _refused(client, "samerging", 1, 1, 0.05, 0.3, False, handle_file(str(big)), api_name="/learn")
    evaluate = _refused(client, handle_file(str(big)), 5, api_name="/evaluate")
    for message in (learn, evaluate):
        assert "may be at most 16.0 MB" in message, message


@pytest.mark.parametrize(
    ("controls", "expected"),
    [(("samerging", 1, 1e308, 0.05, 0.3, False), "greater than maximum value"),
     (("samerging", 1, 1, 7, 0.3, False), "greater than maximum value"),
     (("__class__", 1, 1, 0.05, 0.3, False), "is not in the list of choices")],
)
def test_learn_refuses_numbers_out_of_range(client, controls, expected):
    message = _refused(client, *controls, None, api_name="/learn")
    assert expected in message, message


@pytest.mark.parametrize(
    ("controls", "expected"),
    [(("samerging", float("nan"), 1, 0.05, 0.3, False), "Examples per task must be a finite number"),
     (("samerging", None, 1, 0.05, 0.3, False), "between 1 and 1024, not empty"),
     (("samerging", 1, 2.5, 0.05, 0.3, False), "Steps must be a whole number, not 2.5"),
     (("samerging", 1, 10**400, 0.05, 0.3, False), "Steps must be between 1 and 5000 (it is a huge number)"),
     (("samerging", 1, 1, "0.05", 0.3, False), "The SAM radius must be a number between 0 and 1, not the text"),
     (("samerging", 1, 1, 0.05, float("-inf"), False), "The starting λ must be a finite number"),
     (("__class__", 1, 1, 0.05, 0.3, False), "Learning method must be one of samerging, adamerging")],
)
def test_learn_controls_behind_the_sliders_are_checked_too(controls, expected):
    """What gradio's sliders cannot send (NaN, null, a string) reaches a handler called from Python."""
    from merging.errors import MergeLabError
    from ui.learn_panel import LearnSettings

    with pytest.raises(MergeLabError) as error:
        LearnSettings.from_controls(*controls)
    assert expected in str(error.value), str(error.value)
    assert LearnSettings.from_controls("samerging", 4.0, 10, 0.05, 0.3, True).examples_per_task == 4


def test_export_yaml_reuses_one_folder_per_session(client):
    client.predict(GOOD, api_name="/merge")
    before = set(Path(tempfile.gettempdir()).glob("mergelab-recipe-*"))
    paths = {client.predict(api_name="/export_yaml")[0] for _ in range(3)}
    assert set(Path(tempfile.gettempdir()).glob("mergelab-recipe-*")) == before  # no temp folder per call
    assert len({Path(p).parent for p in paths}) == 1  # gradio's cached copies: the same file each time


def test_merge_settings_refuse_non_finite_numbers():
    """NaN and inf cannot travel as JSON through gradio_client; handlers given them by Python still refuse them."""
    for raw, expected in (({**GOOD, "weights": [float("nan"), 1]}, "weights[0] must be a finite number"),
                          ({**GOOD, "params": {"density": float("inf")}}, "params.density must be a finite"),
                          ({**GOOD, "weights": [True, 1]}, "weights[0] must be a number, not a boolean")):
        with pytest.raises(Exception, match=expected.replace("[", r"\[").replace("]", r"\]")):
            MergeSettings.from_dict(raw)
    assert MergeSettings.from_dict({**GOOD, "seed": 3.0}).seed == 3


@pytest.fixture(scope="module")
def hosted_url(tmp_path_factory):
    from app import create_app
    from ui.hosting import HostConfig

    config = HostConfig.detect(hosted=True, models_dir=tmp_path_factory.mktemp("hosted-models"))
    demo = create_app(config)
    url = launch_local(demo)
    yield url
    close_app(demo)


@pytest.mark.parametrize(
    ("base", "sources", "expected"),
    [("a\x00b", "e1", "holds a NUL byte"), ("x" * 300, "e1", "has a name of 300 bytes"),
     ("y" * 5000, "e1", "is 5000 characters long"), ("base", "ok\n" + "z" * 3000, "line 2"),
     ("base", "\n".join(["m"] * 500), "at most 64 models")],
)
def test_hosted_local_folders_field_gives_a_short_message(hosted_url, base, sources, expected):
    client = api_client(hosted_url)
    message = _refused(client, "Local folders", None, [], base, sources, None, api_name="/preflight")
    assert expected in message, message
    assert len(message) < 400 and "x" * 60 not in message and "y" * 60 not in message and "z" * 60 not in message


def test_per_session_state_goes_with_the_session():
    """The Merge panel's newest-move stamp and the downloads folder belong to the session: nothing per session is
    kept at module level, and closing a session removes its downloads."""
    from ui import merge_panel, workspace
    from ui.session import close_session, new_session, session_downloads

    first, second = new_session(), new_session()
    assert workspace.newest_move(first, 5.0) and not workspace.newest_move(first, 4.0)
    assert workspace.newest_move(second, 4.0)  # another session's stamps do not count
    assert not workspace.newest_move(first, float("nan"))
    assert not any(isinstance(v, dict) and first.id in v for module in (merge_panel, workspace)
                   for v in vars(module).values())
    folder = session_downloads(first, "recipe")
    (folder / "mergekit_config.yml").write_text("x", encoding="utf-8")
    assert session_downloads(first, "recipe") == folder  # reused, not a new folder per call
    close_session(first)
    assert not (first.downloads_root / first.id).exists()


GENERIC = ("upstream Gradio app has raised an exception", "Something went wrong")


def test_every_endpoint_answers_nulls_and_wrong_kinds_with_a_message(client):
    """Each named endpoint, every argument null, then every argument a nested list: a message naming what is wrong
    (a field, or what to do first), never gradio's generic error. /chat's chat histories and /evaluate's task file
    included: gradio checks them against its data models before any component (ui.fields.checked_data_model)."""
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/merge", "/sweep", "/learn", "/preflight", "/export_yaml", "/interference", "/chat",
            "/evaluate"} <= set(endpoints)
    for name, endpoint in endpoints.items():
        count = len(endpoint["parameters"])
        forms = [[None] * count, [[[[[]]]]] * count]
        for args in forms:
            try:
                client.predict(*args, api_name=name)
            except AppError as error:
                assert not any(g in str(error) for g in GENERIC), (name, args[:1], str(error))


CHAT_HISTORY = 'send the conversation as a list of messages, each {"role": "user" or "assistant", "content"'
TASK_FILE = 'Task file (optional, JSONL): send a file (in Python: gradio_client.handle_file("path/to/file"))'


@pytest.mark.parametrize(
    ("text", "merged", "compare", "expected"),
    [("3+4=", [["3+4=", "7"]], [], f"Merged model: {CHAT_HISTORY}"),  # the old (user, bot) pairs
     ("3+4=", [{"role": "user", "content": "3+4="}], [], f"Merged model: {CHAT_HISTORY}"),  # content not as parts
     ("3+4=", "3+4=", [], f"Merged model: {CHAT_HISTORY}"),
     ("3+4=", [], {"role": "user"}, f"Source model: {CHAT_HISTORY}"),
     ([["3+4="]], [], [], "Message: send text, not a list")],  # never chatted as its Python text "[['3+4=']]"
)
def test_chat_says_what_a_history_and_a_message_must_look_like(client, text, merged, compare, expected):
    message = _refused(client, text, merged, compare, "(none)", 4, 0.0, 1.0, "none", api_name="/chat")
    assert expected in message, message


@pytest.mark.parametrize("task_file", [[[["x"]]], "tasks.jsonl", 5, {"path": "/etc/passwd"}])
def test_evaluate_says_how_to_send_a_task_file(client, task_file):
    message = _refused(client, task_file, 5, api_name="/evaluate")
    assert TASK_FILE in message and "passwd" not in message, message
