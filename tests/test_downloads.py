"""The files the page offers for download (the recipe, evaluation results, sweeps, searches) live in one folder per
session inside the app's own models folder, and stay bounded however many sessions never close."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import gradio as gr
import pytest

from ui.hosting import HostConfig
from ui.session import (
    DOWNLOADS,
    MAX_DOWNLOAD_SESSIONS,
    FreshSession,
    close_session,
    new_session,
    prune_downloads,
    session_downloads,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_exports_from_many_sessions_that_never_close_leave_a_bounded_number_of_folders(tmp_path):
    root = tmp_path / "downloads"
    sessions = [new_session(root) for _ in range(MAX_DOWNLOAD_SESSIONS + 10)]
    for session in sessions:
        for _ in range(3):  # each session exports three times: one folder, its file replaced
            (session_downloads(session, "recipe") / "mergekit_config.yml").write_text("x", encoding="utf-8")
        (session_downloads(session, "results") / "results.json").write_text("{}", encoding="utf-8")
    left = {p.name for p in root.iterdir()}
    assert len(left) == MAX_DOWNLOAD_SESSIONS
    assert sessions[-1].id in left and sessions[0].id not in left
    assert all(len(list((root / name).iterdir())) == 2 for name in left)  # recipe/ and results/, nothing else
    again = session_downloads(sessions[0], "recipe")  # a pruned session that comes back gets its folder back
    assert again.is_dir() and len(list(root.iterdir())) == MAX_DOWNLOAD_SESSIONS


def test_the_least_recently_used_session_folders_go_first(tmp_path):
    for name, used in (("old", 100), ("newest", 300), ("middle", 200)):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (used, used))
    (tmp_path / "a-file").write_text("kept", encoding="utf-8")  # not a session folder: left alone
    assert [p.name for p in prune_downloads(tmp_path, keep=2)] == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "middle", "newest"]
    assert prune_downloads(tmp_path / "missing", keep=2) == []


def test_closing_a_session_removes_its_downloads(tmp_path):
    session = new_session(tmp_path)
    (session_downloads(session, "sweep") / "sweep.json").write_text("{}", encoding="utf-8")
    close_session(session)
    assert not (tmp_path / session.id).exists()


def _page_session(demo: gr.Blocks):
    """The Session a new browser tab (or API client) of `demo` gets: a copy of its state's initial value."""
    fresh = next(b.value for b in demo.blocks.values() if isinstance(b, gr.State) and isinstance(b.value, FreshSession))
    return copy.deepcopy(fresh)


def test_a_hosted_page_writes_its_downloads_only_inside_its_models_folder(tmp_path):
    """Recipe export and evaluation results on the tiny zoo, through a hosted page's own session: every file lies in
    the models folder's downloads/<session>/, nothing in the shared temp folder."""
    from app import create_app, launch_options
    from ui import export_panel, merge_panel, models_panel
    from ui.evaluate_panel import evaluate, write_downloads

    config = HostConfig.detect(hosted=True, models_dir=tmp_path / "models")
    session = _page_session(create_app(config))
    assert session.downloads_root == config.downloads_dir and config.downloads_dir.is_relative_to(config.models_dir)
    assert str(config.downloads_dir) in launch_options(config)["allowed_paths"]  # gradio may serve them from there
    choice = models_panel.ModelsChoice("Zoo", "lm", ["math", "japanese"], "", "")
    assert "ready to merge" in models_panel.check_models(session, config, choice)
    merge_panel.merge_if_none(session, config)
    written = [Path(export_panel.recipe_file(session))]
    written += [Path(p) for p in write_downloads(session, evaluate(session, config, None, 2))]
    assert {p.name for p in written} == {"mergekit_config.yml", "results.json", "results.csv", "recipe.yaml"}
    for path in written:
        assert path.is_file() and path.is_relative_to(config.downloads_dir / session.id), path
    assert not (DOWNLOADS / session.id).exists()
