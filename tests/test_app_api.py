"""The app driven through its API with gradio_client, as a script or a person would: preflight -> merge -> chat ->
evaluate on the zoo, and every kind of bad input answered with a message that says what to fix (no traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

gradio_client = pytest.importorskip("gradio_client")
from gradio_client.exceptions import AppError

from tests.conftest import api_client
from ui.catalog import HUB


@pytest.fixture(scope="module")
def client(zoo_client):
    return zoo_client


def settings(method="ties", weights=(0.6, 0.4), **params) -> dict:
    return {"method": method, "weights": list(weights), "params": params, "seed": 0}


def test_preflight_merge_chat_evaluate(client):
    status = client.predict(settings(density=0.5), api_name="/merge")
    assert "Merged with **ties**" in status and "math 0.6" in status

    job = client.submit("3+4=", [], [], "math", 12, 0.0, 1.0, "none", api_name="/chat")
    outputs = job.result()
    merged, compare = outputs[0], outputs[1]
    assert merged[0]["role"] == "user" and merged[-1]["role"] == "assistant"
    assert _text(merged[-1]["content"]), "the merged model answered nothing"
    assert _text(compare[-1]["content"]), "the comparison model answered nothing"
    assert len(job.outputs()) >= 2, "the answer arrived in one piece, not streamed"

    status, _chart, table, downloads = client.predict(None, 5, api_name="/evaluate")
    assert "Evaluated" in status
    assert "| math | math |" in table and "japanese_math" in table
    names = sorted(Path(f).name for f in downloads)
    assert names == ["recipe.yaml", "results.csv", "results.json"]
    results = json.loads(Path(next(f for f in downloads if f.endswith(".json"))).read_text(encoding="utf-8"))
    assert results["recipe"]["merge_method"] == "ties" and set(results["tasks"]) >= {"math", "japanese"}


def test_yaml_export_is_the_merged_recipe(client):
    client.predict(settings("dare_ties", (0.7, 0.3), density=0.6), api_name="/merge")
    path, text = client.predict(api_name="/export_yaml")
    assert "merge_method: dare_ties" in text and "density: 0.6" in text
    assert Path(path).read_text(encoding="utf-8").strip() == text.strip()


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content if isinstance(block, dict))


@pytest.mark.parametrize(("bad", "fix"), [
    (settings(density=1.5), "density = 1.5 is outside [0, 1]"),
    (settings(weights=(0.0, 0.0)), "every weight is 0"),
    (settings("linear", (1.0, -1.0)), "weights sum to zero"),
    (settings(weights=(0.5,)), "give one weight per source model"),
    (settings("no_such_method"), "no_such_method"),
])
def test_bad_merge_settings_say_what_to_fix(client, bad, fix):
    with pytest.raises(AppError) as error:
        client.predict(bad, api_name="/merge")
    message = str(error.value)
    assert fix in message and "Traceback" not in message


def test_unknown_hub_id_without_network_fails_at_once(app_url, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    HUB.forget()
    try:
        with pytest.raises(AppError) as error:
            api_client(app_url).predict("Hub ids", None, [], "no-such-org/no-such-model",
                                                   "no-such-org/other", None, api_name="/preflight")
    finally:
        HUB.forget()
    assert "cannot reach" in str(error.value) and "local folder" in str(error.value)


def test_incompatible_models_are_reported_before_merging(app_url, tmp_path):
    from tests.factory import make_family

    small = make_family(tmp_path / "small", n_experts=1, hidden=32)
    large = make_family(tmp_path / "large", n_experts=1, hidden=64)
    report = api_client(app_url).predict(
        "Local folders", None, [], str(small.base), f"{small.experts[0]}\n{large.experts[0]}", None,
        api_name="/preflight")
    assert "problem" in report and "shape" in report.lower(), report
    assert "Live merging is on" not in report


def test_malformed_task_file_names_the_line(client, tmp_path):
    client.predict(settings(density=0.5), api_name="/merge")
    bad = tmp_path / "tasks.jsonl"
    bad.write_text('{"task": "math", "prompt": "1+1=", "answer": "答え: 2", "expert": "math"}\n{not json\n',
                   encoding="utf-8")
    from gradio_client import handle_file

    with pytest.raises(AppError) as error:
        client.predict(handle_file(str(bad)), 5, api_name="/evaluate")
    assert "line 2" in str(error.value) or ":2" in str(error.value), str(error.value)


def test_missing_local_folder(app_url):
    with pytest.raises(AppError) as error:
        api_client(app_url).predict("Local folders", None, [], "/no/such/base", "/no/such/expert", None,
                                               api_name="/preflight")
    assert "does not exist" in str(error.value)


def test_sweep_and_interference(client):
    job = client.submit("ties", "0.5,1.0", "0.5,1.0", "accuracy", 5, None, "weight", "density", api_name="/sweep")
    best, _chart, files, _points = job.result()
    assert len(job.outputs()) >= 3, "the heatmap did not fill in point by point"  # estimate, points, result
    assert "**Best**: ties at weight (every source)" in best and "4 points" in best
    assert sorted(Path(f).suffix for f in files) == [".csv", ".csv", ".json", ".yaml"]  # table, per-task table
    # The best point, kept, is the current merge: the exported recipe is the one that was scored.
    note, status, *_controls = client.predict(None, api_name="/use_sweep_point")
    assert "now use it" in note and "Merged with **ties**" in status
    scored = next(Path(f) for f in files if f.endswith(".yaml")).read_text(encoding="utf-8")
    _file, exported = client.predict(api_name="/export_yaml")
    assert yaml.safe_load(exported)["models"] == yaml.safe_load(scored)["models"]
    assert yaml.safe_load(exported).get("parameters") == yaml.safe_load(scored).get("parameters")
    cosine, conflicts, kept = client.predict(0.5, api_name="/interference")
    assert all(isinstance(figure, dict) for figure in (cosine, conflicts, kept))


def test_search_reports_held_out_and_lists_its_proposals(client):
    summary, _chart, files, _points = client.predict("ties", "japanese_math.accuracy", 6, None, "tpe", 3, False,
                                                    "this process", api_name="/search")
    assert "held out half" in summary and "3 proposals" in summary
    assert any(f.endswith("mergekit_config.yml") for f in files)  # the best recipe, as mergekit runs it


def test_sweep_grid_too_big_says_so(client):
    with pytest.raises(AppError) as error:
        client.predict("ties", "0:1:0.05", "0:1:0.05", "accuracy", 5, None, api_name="/sweep")
    assert "coarser steps" in str(error.value)


def test_re_merge_to_the_same_folder_is_what_evaluate_scores(client):
    """Two folder merges under one name: /evaluate scores the second and its results.json names that recipe (the
    handler tests compare the scored model with a fresh load of the folder)."""
    for weights in ([0.5, 0.5], [2.5, -1.0]):
        status = client.predict(settings("task_arithmetic", weights), "same", api_name="/merge_to_folder")
        assert "Saved to" in status, status
    _status, _chart, _table, downloads = client.predict(None, 5, api_name="/evaluate")
    results = json.loads(Path(next(f for f in downloads if f.endswith(".json"))).read_text(encoding="utf-8"))
    assert [m["parameters"]["weight"] for m in results["recipe"]["models"]] == [2.5, -1.0]
    assert results["merge"]["mode"] == "folder"
