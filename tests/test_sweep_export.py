"""The Evaluate tab's sweep writes its best recipe beside the results (issue 9, item 7): it must name the real model
folders (as Export does), not the session's labels `base`/`math`, so `merging check` on it finds the models instead
of trying the Hub."""

from __future__ import annotations

from pathlib import Path

import pytest

from merging.preflight import preflight
from merging.recipe import load_recipe
from ui import evaluate_panel, merge_panel, models_panel
from ui.hosting import APP_ROOT, HostConfig
from ui.session import new_session

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_sweep_s_best_recipe_names_the_model_folders_and_passes_check(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = HostConfig.detect(hosted=False, models_dir=tmp_path / "models")
    session = new_session()
    choice = models_panel.ModelsChoice("Zoo", "lm", ["math", "japanese"], "", "")
    assert "ready to merge" in models_panel.check_models(session, config, choice)
    merge_panel.run_merge(session, config, {"method": "ties", "weights": [0.5, 0.5], "params": {}})
    result = evaluate_panel.sweep(session, config, "ties", "0.5,1.0", "0.5", per_task=2)
    _chart, _text, files = evaluate_panel.sweep_outputs(result, tmp_path / "sweep")
    best = load_recipe(next(Path(f) for f in files if f.endswith(".yaml")))
    refs = [best.base_model, *(m.model for m in best.models)]
    assert not set(refs) & {"base", *session.labels}, refs
    monkeypatch.chdir(APP_ROOT)  # zoo folders are written relative to the app, as Export writes them
    report = preflight(best)
    assert report.ok, report.errors
    assert {Path(m["path"]).resolve() for m in report.facts["models"].values()} == {
        Path(session.base.path).resolve(), *(Path(s.path).resolve() for s in session.sources)}
