"""A process SIGKILLed during a folder merge or an export, then the app restarted (issue 18): no folder that looks
finished but is not, the hidden debris removed at start-up, and a replaced folder never lost. The kills are real
(SIGKILL to a child process), placed by progress files the child writes, not by timing. A full disk during export
(a real 2 MB tmpfs when the tests run as root, else ENOSPC raised by the shard writer's file) gives a message and
leaves nothing behind."""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from merging.debris import clean_debris
from merging.errors import MergeLabError
from tests.factory import make_family

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 300  # generous for a loaded 2-core machine; the child signals progress long before

CHILD = r'''
import pathlib, sys, time
from merging.engine import merge_to_folder
from merging.recipe import Recipe

base, e0, e1, out, flag, mode = sys.argv[1:7]
recipe = Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": base,
                           "models": [{"model": e0, "parameters": {"weight": 0.5}},
                                      {"model": e1, "parameters": {"weight": 0.5}}]})

def stall(note):
    pathlib.Path(flag).write_text(note)
    time.sleep(3600)  # the parent SIGKILLs us here

if mode == "merge":  # killed while tensors are being written
    merge_to_folder(recipe, out, progress=lambda p: stall("writing"), overwrite=True)
else:  # "export": killed between moving the old folder aside and moving the new one in
    real = pathlib.Path.rename
    def rename(self, target):
        result = real(self, target)
        if self.name == pathlib.Path(out).name:
            stall("moved aside")
        return result
    pathlib.Path.rename = rename
    merge_to_folder(recipe, out, overwrite=True)
'''


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("killed") / "fam")


def _run_and_kill(family, out: Path, mode: str, tmp_path: Path) -> int:
    """Start the child, wait for its progress file, SIGKILL it; returns its pid."""
    flag = tmp_path / f"{mode}.flag"
    script = tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    child = subprocess.Popen([sys.executable, str(script), str(family.base), str(family.experts[0]),
                              str(family.experts[1]), str(out), str(flag), mode], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE)
    deadline = time.monotonic() + WAIT_S
    while not flag.exists():
        assert child.poll() is None, f"the child ended before the kill: {child.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "the child never reached the point to kill it"
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=60) == -signal.SIGKILL
    return child.pid


def _restart(models_dir: Path) -> None:
    """What a restart does before serving: create_app in a fresh process."""
    code = ("from pathlib import Path; from app import create_app; from ui.hosting import HostConfig; "
            f"create_app(HostConfig.detect(hosted=False, models_dir=Path({str(models_dir)!r})))")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=WAIT_S,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_killed_folder_merge_leaves_no_finished_looking_folder_and_restart_cleans(family, tmp_path):
    models = tmp_path / "models"
    out = models / "merged" / "session1" / "merged"
    pid = _run_and_kill(family, out, "merge", tmp_path)
    assert not out.exists(), "a killed merge left a folder under the output's name"
    assert _hidden(out.parent) == [f".merged.incomplete-{pid}"]
    assert not (out.parent / f".merged.incomplete-{pid}" / "config.json").exists()  # config is written last
    _restart(models)
    assert _hidden(out.parent) == [] and not out.exists()


def test_export_killed_while_replacing_keeps_the_previous_model(family, tmp_path):
    from merging.engine import merge_to_folder
    from merging.recipe import Recipe

    models = tmp_path / "models"
    out = models / "merged" / "session1" / "export"
    recipe = Recipe.from_dict({"merge_method": "linear", "models": [{"model": str(family.experts[0]),
                                                                      "parameters": {"weight": 1.0}}]})
    merge_to_folder(recipe, out)
    before = sorted((p.name, p.stat().st_size) for p in out.iterdir())
    pid = _run_and_kill(family, out, "export", tmp_path)
    assert not out.exists() and f".export.old-{pid}" in _hidden(out.parent)
    _restart(models)
    assert _hidden(out.parent) == []
    assert sorted((p.name, p.stat().st_size) for p in out.iterdir()) == before  # the previous export, whole


SERVER = r'''
import sys
from pathlib import Path
from app import create_app
from ui.hosting import HostConfig

demo = create_app(HostConfig.detect(hosted=False, models_dir=Path(sys.argv[1])))
demo.launch(server_name="127.0.0.1", server_port=int(sys.argv[2]), quiet=True)
'''


def test_app_killed_during_a_folder_merge_then_restarted(tmp_path):
    """The whole app SIGKILLed while /merge_to_folder writes (the engine slowed per tensor by its test hook), then
    started again: no folder under the merge's name, the hidden temp folder gone after the restart."""
    import socket


    models = tmp_path / "models"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = tmp_path / "server.py"
    script.write_text(SERVER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MERGELAB_TEST_TENSOR_DELAY_S": "0.5"}
    server = subprocess.Popen([sys.executable, str(script), str(models), str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = _wait_for_server(server, f"http://127.0.0.1:{port}/")
        client.predict("Zoo", "lm", ["math", "japanese"], "", "", None, api_name="/preflight")
        client.submit({"method": "task_arithmetic", "weights": [0.5, 0.5], "params": {}, "seed": 0}, "killed",
                      api_name="/merge_to_folder")
        deadline = time.monotonic() + WAIT_S
        while not list(models.glob("merged/*/.killed.incomplete-*/*.safetensors")):
            assert server.poll() is None and time.monotonic() < deadline, "the merge never started writing"
            time.sleep(0.1)
    finally:
        server.kill()
        server.wait(timeout=60)
    session_folder = next(models.glob("merged/*"))
    assert not (session_folder / "killed").exists()
    assert _hidden(session_folder) == [f".killed.incomplete-{server.pid}"]
    _restart(models)
    assert _hidden(session_folder) == [] and not (session_folder / "killed").exists()


def _wait_for_server(server: subprocess.Popen, url: str):
    from tests.conftest import api_client

    deadline = time.monotonic() + WAIT_S
    while True:
        assert server.poll() is None, "the app ended while starting"
        try:
            return api_client(url)
        except Exception:  # noqa: BLE001 - not listening yet
            assert time.monotonic() < deadline, "the app did not start"
            time.sleep(0.5)


def test_debris_of_running_processes_is_kept(tmp_path):
    mine = tmp_path / f".merged.incomplete-{os.getpid()}"
    mine.mkdir()
    assert clean_debris(tmp_path) == [] and mine.is_dir()


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (real ENOSPC) when we may mount one, else None."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                                           capture_output=True, check=False).returncode != 0:
        yield None
        return
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_during_export_gives_a_message_and_leaves_nothing(small_disk, tmp_path, monkeypatch):
    from merging.engine import merge_to_folder
    from merging.recipe import Recipe

    family = make_family(tmp_path / "big", hidden=128, layers=2)  # ~1.3 MB per model in float32
    recipe = Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": str(family.base),
                               "models": [{"model": str(e), "parameters": {"weight": 0.5}} for e in family.experts]})
    disk = small_disk if small_disk is not None else tmp_path / "disk"
    out = disk / "merged" / "export"

    def fill_the_disk(_progress) -> None:  # after the engine's free-space check: the disk fills mid-write
        filler = small_disk / "filler"
        if not filler.exists():
            with open(filler, "wb") as handle, pytest.raises(OSError) as full:
                handle.write(b"\0" * (4 << 20))
            assert full.value.errno == errno.ENOSPC

    if small_disk is None:  # not root: the shard files fail as a full disk makes them fail (simulated ENOSPC)
        from merging import shards

        class FullDisk(io.FileIO):
            def write(self, data) -> int:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(shards, "open", lambda path, mode="r", *a, **k: FullDisk(path, mode.replace("b", "")),
                            raising=False)

    with pytest.raises(MergeLabError) as error:
        merge_to_folder(recipe, out, progress=fill_the_disk if small_disk is not None else None)
    message = str(error.value)
    assert "disk" in message.lower() or "space" in message.lower(), message
    assert not out.exists() and _hidden(out.parent) == []


def test_full_disk_during_the_export_tab_save_gives_a_message_and_leaves_nothing(small_disk, tmp_path, monkeypatch):
    """The same through the Export tab's handler (/export), the models folder on the small disk."""
    from ui import export_panel, merge_panel, models_panel
    from ui.hosting import HostConfig
    from ui.session import new_session

    models = (small_disk if small_disk is not None else tmp_path) / "models"
    config = HostConfig.detect(hosted=False, models_dir=models)
    session = new_session()
    models_panel.check_models(session, config, models_panel.ModelsChoice("Zoo", "lm", ["math", "japanese"], "", ""))
    merge_panel.run_merge(session, config, {"method": "task_arithmetic", "weights": [0.5, 0.5], "params": {},
                                            "seed": 0})

    def fill_the_disk(_fraction, desc=None) -> None:
        filler = small_disk / "filler"
        if not filler.exists():
            with open(filler, "wb") as handle, pytest.raises(OSError):
                handle.write(b"\0" * (4 << 20))

    if small_disk is None:  # not root: simulated ENOSPC from the shard files
        from merging import shards

        class FullDisk(io.FileIO):
            def write(self, data) -> int:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(shards, "open", lambda path, mode="r", *a, **k: FullDisk(path, mode.replace("b", "")),
                            raising=False)
    with pytest.raises(MergeLabError) as error:
        export_panel.save_folder(session, config, "full", fill_the_disk if small_disk is not None else None)
    assert "disk is full" in str(error.value), str(error.value)
    folder = session.merged_folder(models, "full")
    assert not folder.exists() and _hidden(folder.parent) == []
