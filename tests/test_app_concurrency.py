"""Four users at once: each picks the zoo, merges with its own weights and chats. All succeed, and none sees another's
merged model (each session's recipe holds its own weights; each chat answer is what its own merge says)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("gradio_client")

from app import create_app
from tests.conftest import api_client
from tests.serving import close_app, launch_local
from ui import chat_panel, evaluate_panel, merge_panel, models_panel
from ui.hosting import HostConfig
from ui.session import new_session

USERS = 4
WEIGHTS = [(1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (0.3, 1.2)]
PROMPT = "七"


def settings(weights) -> dict:
    return {"method": "task_arithmetic", "weights": list(weights), "params": {}, "seed": 0}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    config = HostConfig.detect(hosted=False, models_dir=tmp_path_factory.mktemp("models"))
    demo = create_app(config)
    url = launch_local(demo)
    yield url, config
    close_app(demo)


def one_user(url: str, weights) -> dict:
    client = api_client(url)
    client.predict("Zoo", "lm", ["math", "japanese"], "", "", None, api_name="/preflight")
    status = client.predict(settings(weights), api_name="/merge")
    merged, _, _ = client.submit(PROMPT, [], [], "(none)", 8, 0.0, 1.0, "none", api_name="/chat").result()
    _, recipe = client.predict(api_name="/export_yaml")
    _status, _chart, _table, downloads = client.predict(None, 5, api_name="/evaluate")
    scored = json.loads(Path(next(f for f in downloads if f.endswith(".json"))).read_text(encoding="utf-8"))
    return {"status": status, "answer": merged[-1]["content"], "recipe": recipe, "scores": scored["tasks"]}


def alone(config: HostConfig, weights) -> tuple[str, dict]:
    """What a merge with these weights answers and scores when made alone, in-process through the same handlers
    (the chat answer without its '— merge #N' tag: merge numbers are unique across sessions)."""
    session = new_session()
    models_panel.check_models(session, config, models_panel.ModelsChoice("Zoo", "lm", ["math", "japanese"], "", ""))
    merge_panel.run_merge(session, config, settings(weights))
    *_, (merged, _) = chat_panel.chat(session, config, PROMPT, [], [], "(none)", chat_panel.GenerationSettings(8))
    scores = evaluate_panel.evaluate(session, config, None, 5)["tasks"]
    return chat_panel.MERGE_TAG.sub("", _text(merged[-1]["content"])), json.loads(json.dumps(scores))


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content if isinstance(block, dict))


def test_four_users_merge_and_chat_without_seeing_each_other(served):
    url, config = served
    with ThreadPoolExecutor(USERS) as pool:
        results = list(pool.map(lambda w: one_user(url, w), WEIGHTS))
    for weights, result in zip(WEIGHTS, results):
        assert "Merged with **task_arithmetic**" in result["status"]
        assert f"math {weights[0]:g}, japanese {weights[1]:g}" in result["status"], result["status"]
        assert f"weight: {weights[0]}" in result["recipe"] and f"weight: {weights[1]}" in result["recipe"]
        answer, scores = alone(config, weights)
        assert chat_panel.MERGE_TAG.sub("", _text(result["answer"])) == answer
        assert result["scores"] == scores  # each evaluation is of its own session's merge
    # The four merges differ, so a session shown another's merge would be caught.
    seen = {json.dumps([chat_panel.MERGE_TAG.sub("", _text(r["answer"])), r["scores"]], sort_keys=True) for r in results}
    assert len(seen) == len(WEIGHTS), seen
    # Each session wrote nothing to another's folder: merged folders are per session.
    merged_root = Path(config.models_dir) / "merged"
    assert not merged_root.exists() or len(list(merged_root.iterdir())) <= USERS


def test_a_failing_preflight_answers_while_other_sessions_load_their_models(served, monkeypatch):
    """Other sessions' pre-flights stuck reading their models (more of them than the queue's default concurrency)
    must not hold up a check that fails before any model is read (a tiny-zoo LM beside a classifier)."""
    import threading

    url, _ = served
    loading, release = threading.Semaphore(0), threading.Event()
    finished: list[object] = []  # loads that ended; none may have when the failing check answers

    def slow_prepare(session):  # stands in for reading 2 GB of sources on a busy machine
        loading.release()
        release.wait(timeout=900)  # held until the check answered (a progress check, not a time limit)
        finished.append(session)

    monkeypatch.setattr(models_panel, "prepare_live", slow_prepare)
    zoo = str(Path(__file__).resolve().parent.parent / "assets" / "zoo")
    busy = [threading.Thread(target=lambda: api_client(url).predict(
        "Zoo", "lm", ["math", "japanese"], "", "", None, api_name="/preflight")) for _ in range(5)]
    try:
        for thread in busy:
            thread.start()
        assert loading.acquire(timeout=900)  # at least one session is inside the slow part
        report = api_client(url).predict("Local folders", None, [], f"{zoo}/lm/base",
                                         f"{zoo}/classifier/sentiment", None, api_name="/preflight")
        assert "problems to fix" in report
        assert finished == [] and not release.is_set()  # answered while the others were still loading
    finally:
        release.set()
        for thread in busy:
            thread.join(timeout=900)
