"""Hosted confinement: with a reachable stand-in Hub on 127.0.0.1 (HF_ENDPOINT pointed at it), the "Hub ids" field
takes Hub ids only. A server path typed there is refused before anything is opened, and an id that happens to name a
folder on the server's disk is asked of the Hub, never read from the disk. The "Local folders" field stays inside
./models (symlinks included). Handlers are called as /preflight calls them, and once through the real API."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from merging.errors import SourceError
from merging.sources import open_model, validate_hub_id
from tests.conftest import api_client
from tests.factory import make_family
from tests.serving import close_app, launch_local
from ui import models_panel
from ui.catalog import HUB, hub_reachable
from ui.hosting import HostConfig
from ui.session import new_session


class _StandInHub(BaseHTTPRequestHandler):
    """Answers every request as the Hub answers for a repository that does not exist, and records the paths."""

    requests: ClassVar[list[str]] = []

    def _not_found(self) -> None:
        type(self).requests.append(self.path)
        body = json.dumps({"error": "Repository Not Found"}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("X-Error-Message", "Repository Not Found")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = _not_found

    def log_message(self, *args: object) -> None:  # keep the test output clean
        pass


@pytest.fixture
def stand_in_hub(monkeypatch, tmp_path):
    """A reachable 'Hub' on 127.0.0.1, as huggingface_hub and MergeLab's reachability probe see it."""
    from huggingface_hub import constants

    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandInHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)  # read once at import; the env var is for subprocesses
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    _StandInHub.requests = []
    HUB.forget()
    yield _StandInHub.requests
    HUB.forget()
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def outside_family(tmp_path_factory):
    """Real model folders on the server's disk, outside any models folder."""
    return make_family(tmp_path_factory.mktemp("outside") / "f", n_experts=1)


@pytest.fixture
def hosted(tmp_path) -> HostConfig:
    (tmp_path / "models").mkdir()
    return HostConfig.detect(hosted=True, models_dir=tmp_path / "models")


def hub_choice(base: str, sources: str) -> models_panel.ModelsChoice:
    return models_panel.ModelsChoice("Hub ids", None, [], base, sources)


@pytest.mark.parametrize("how", ["absolute", "relative", "home", "dotdot"])
def test_hub_id_field_refuses_server_paths_when_hosted(stand_in_hub, hosted, outside_family, monkeypatch, how):
    assert hub_reachable()  # the Hub answers: the path must be refused anyway
    base, expert = Path(outside_family.base), Path(outside_family.experts[0])
    monkeypatch.chdir(base.parent)
    refs = {"absolute": (str(base), str(expert)), "relative": (f"./{base.name}", f"./{expert.name}"),
            "home": ("~/x", "~/y"), "dotdot": (f"../{base.parent.name}/{base.name}", f"a/../{expert.name}")}[how]
    with pytest.raises(SourceError, match="not a Hugging Face Hub id") as error:
        models_panel.check_models(new_session(), hosted, hub_choice(*refs))
    assert str(base.parent) not in hosted.public_message(str(error.value))
    assert stand_in_hub == []  # refused before anything was asked of the Hub or read from the disk


def test_hub_id_naming_a_server_folder_is_asked_of_the_hub_not_read_from_disk(stand_in_hub, hosted, tmp_path,
                                                                                monkeypatch):
    family = make_family(tmp_path / "owner", n_experts=1)  # owner/base and owner/expert_0 exist on this disk
    monkeypatch.chdir(tmp_path)
    base_id, expert_id = f"owner/{Path(family.base).name}", f"owner/{Path(family.experts[0]).name}"
    assert Path(base_id, "config.json").is_file()
    with pytest.raises(SourceError, match="Could not download") as error:
        models_panel.check_models(new_session(), hosted, hub_choice(base_id, expert_id))
    assert base_id in str(error.value)
    assert any(base_id in path for path in stand_in_hub), stand_in_hub  # the Hub was asked


def test_local_mode_still_reads_local_folders(stand_in_hub, tmp_path, outside_family):
    """Outside hosted mode the Hub-id field keeps accepting a local folder (the machine's owner typed it)."""
    local = HostConfig.detect(hosted=False, models_dir=tmp_path / "models")
    report = models_panel.check_models(new_session(), local, hub_choice(str(outside_family.base),
                                                                        str(outside_family.experts[0])))
    assert "ready to merge" in report


def test_open_model_hub_only_never_opens_local_paths(stand_in_hub, tmp_path, outside_family, monkeypatch):
    with pytest.raises(SourceError, match="not a Hugging Face Hub id"):
        open_model(str(outside_family.base), hub_only=True)
    make_family(tmp_path / "org", n_experts=0)
    monkeypatch.chdir(tmp_path)
    assert open_model("org/base").path == Path("org/base")  # without the flag: the local folder
    with pytest.raises(SourceError, match="Could not download 'org/base'"):
        open_model("org/base", hub_only=True)


@pytest.mark.parametrize("ref", ["/etc/passwd", "../x", "a/../b", "~root/x", "a\\b", "a/b/c", "-a/b", "a/b.", ".a",
                                 "a--b/c", "a/b.git", "x" * 97 + "/y", "a/" + "b" * 97, "", "a b/c"])
def test_validate_hub_id_refuses_anything_but_an_id(ref):
    with pytest.raises(SourceError, match="not a Hugging Face Hub id"):
        validate_hub_id(ref)


@pytest.mark.parametrize("ref", ["gpt2", "openai-community/gpt2", "tanganke/gpt2_cola", "a/" + "b" * 96,
                                 "Qwen/Qwen2.5-0.5B-Instruct"])
def test_validate_hub_id_accepts_real_ids(ref):
    assert validate_hub_id(ref) == ref


def test_local_folders_field_stays_inside_models_when_hosted(hosted, outside_family):
    with pytest.raises(SourceError, match="does not exist"):  # an absolute path is taken inside ./models
        models_panel.check_models(new_session(), hosted, models_panel.ModelsChoice(
            "Local folders", None, [], str(outside_family.base), str(outside_family.experts[0])))
    (hosted.models_dir / "link").symlink_to(Path(outside_family.base).parent)  # a way out through a symlink
    with pytest.raises(SourceError, match="outside the app's models folder"):
        models_panel.check_models(new_session(), hosted, models_panel.ModelsChoice(
            "Local folders", None, [], "link/base", "link/expert0"))


def test_hosted_api_refuses_server_paths_in_the_hub_id_field_and_in_uploads(stand_in_hub, tmp_path,
                                                                            outside_family):
    """Through the real server and gradio_client, as the probe found it."""
    import gradio_client
    import httpx

    from app import create_app

    config = HostConfig.detect(hosted=True, models_dir=tmp_path / "models")
    demo = create_app(config)
    url = launch_local(demo)
    secret = tmp_path / "server-side.jsonl"  # a file on the server that no user uploaded
    secret.write_text('{"task": "t", "prompt": "p", "answer": "1", "expert": null}\n', encoding="utf-8")
    try:
        client = api_client(url)
        with pytest.raises(gradio_client.exceptions.AppError) as error:
            client.predict("Hub ids", None, [], str(outside_family.base), str(outside_family.experts[0]), None,
                           api_name="/preflight")
        # Upload fields (task files, learn prompts) take only files a user uploaded: a server path sent as the
        # file (raw HTTP, so no client uploads it first) is refused by Gradio before any handler runs.
        call = httpx.post(f"{url}gradio_api/call/evaluate", timeout=60, json={
            "data": [{"path": str(secret), "meta": {"_type": "gradio.FileData"}}, 5]})
        events = httpx.get(f"{url}gradio_api/call/evaluate/{call.json()['event_id']}", timeout=60).text
    finally:
        close_app(demo)
    message = str(error.value)
    assert "not a Hugging Face Hub id" in message and "ready to merge" not in message
    assert str(Path(outside_family.base).parent) not in message
    assert "event: error" in events and "event: complete" not in events, events


def test_hosted_hub_downloads_go_into_the_models_folder(tmp_path, monkeypatch):
    """A Hub id typed on a hosted page is fetched into ./models/hub-cache, not huggingface_hub's cache in the home
    folder: laid out as huggingface_hub lays out a cache and read offline, the id resolves only there."""
    import shutil

    from merging import sources
    from ui import workspace

    config = HostConfig.detect(hosted=True, models_dir=tmp_path / "models")
    assert config.hub_cache_dir == config.models_dir / "hub-cache"
    assert HostConfig.detect(hosted=False, models_dir=tmp_path / "models").hub_cache_dir is None
    family = make_family(tmp_path / "made", n_experts=1, layers=1)
    commit = "c" * 40
    repo = config.hub_cache_dir / "models--owner--name"
    shutil.copytree(family.base, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(sources, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(workspace, "require_hub", lambda what: None)  # the gate in front; the download is tested
    label, folder = workspace._resolve_ref("owner/name", "Hub ids", config)
    assert (label, folder) == ("name", repo / "snapshots" / commit)
    assert folder.is_relative_to(config.models_dir)


def test_hosted_uploads_land_in_the_models_folder(tmp_path, monkeypatch):
    """Hosted, the server sets gradio's upload folder inside ./models before the page is built (app.main applies
    HostConfig.environment()): a task file sent through the real API is stored there, not in the system's temp."""
    import gradio_client
    from gradio_client import handle_file

    from app import create_app

    config = HostConfig.detect(hosted=True, models_dir=tmp_path / "models")
    assert HostConfig.detect(hosted=False, models_dir=tmp_path / "models").environment() == {}
    for name, value in config.environment().items():
        monkeypatch.setenv(name, value)
    task_file = tmp_path / "my-tasks.jsonl"
    task_file.write_text('{"task": "t", "prompt": "p", "answer": "1", "expert": null}\n', encoding="utf-8")
    demo = create_app(config)
    assert demo.delete_cache == config.cache_sweep == (3600, 4 * 3600)  # swept hourly of files over 4 h old
    assert create_app(HostConfig.detect(hosted=False, models_dir=tmp_path / "local")).delete_cache is None
    url = launch_local(demo)
    try:
        with pytest.raises(gradio_client.exceptions.AppError, match="Choose the models"):  # refused after upload
            api_client(url).predict(handle_file(str(task_file)), 5, api_name="/evaluate")
        stored = list(config.uploads_dir.rglob("my-tasks.jsonl"))
        assert stored and all(p.read_bytes() == task_file.read_bytes() for p in stored)
    finally:
        close_app(demo)
    assert not list(config.uploads_dir.rglob("my-tasks.jsonl"))  # the server stopped: its cache is removed
