"""The Evaluate tab's grid and search (issue 16 and issue 20's student's grid), through the handlers the page calls:
one task's metric, weight × density by default, the heatmap filling in point by point with a time estimate, the
table as CSV with one column per task, and a search whose best proposal can be kept as the current merge."""

from __future__ import annotations

import csv

import pytest

from evaluation.charts import search_figure, sweep_heatmap
from ui import evaluate_panel, merge_panel, models_panel, sweep_search, workspace
from ui.hosting import HostConfig
from ui.session import new_session

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def session_and_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = HostConfig.detect(hosted=False, models_dir=tmp_path / "models")
    session = new_session()
    choice = models_panel.ModelsChoice("Zoo", "lm", ["math", "japanese"], "", "")
    assert "ready to merge" in models_panel.check_models(session, config, choice)
    return session, config


def test_one_task_s_metric_weight_by_density_filling_in_and_a_csv_per_task(session_and_config, tmp_path):
    session, config = session_and_config
    assert "japanese_math.accuracy" in evaluate_panel.metric_choices(session)
    _, rows, columns = evaluate_panel.sweep_axes(session, "ties")
    assert (rows, columns) == ("weight", "density")  # not λ × density
    partials = []
    result = evaluate_panel.sweep(session, config, "ties", "0.5,1.0", "0.4,1.0", "japanese_math.accuracy",
                                  per_task=3, partial=lambda r: partials.append(len(r.points)))
    assert partials == [1, 2, 3, 4]
    assert all(p.settings["params"]["normalize"] is False for p in result.points)  # the weight axis matters
    text = sweep_search.progress_text(result, 4, 1)
    assert "4 of 4 points" in text and "s a point" in text
    assert "the first one is measured" in sweep_search.starting_text(None, 4, 1)
    assert "at the last sweep's" in sweep_search.starting_text(result, 25, 2)  # before the next one starts
    assert evaluate_panel.grid_points("0.2:1.0:0.2", "0.2:1.0:0.2") == 25
    partial = sweep_heatmap(result)
    assert partial.data[0].z is not None
    written = result.write(tmp_path / "sweep.json")
    table = list(csv.DictReader(written["tasks_csv"].open(encoding="utf-8")))
    assert [name for name in table[0] if name in result.tasks] == result.tasks  # one column per task
    assert [float(r["japanese_math"]) for r in table] == [p.value("japanese_math.accuracy") for p in result.points]


def test_a_search_on_the_page_reports_held_out_and_its_best_can_become_the_merge(session_and_config):
    session, config = session_and_config
    merge_panel.run_merge(session, config, {"method": "ties", "weights": [0.5, 0.5], "params": {"density": 0.5}})
    result = evaluate_panel.search(session, config, "ties", "accuracy", per_task=4, sampler="cmaes", budget=3,
                                   compare=False, runner=sweep_search.RUNNER_CHOICES[0])
    assert len(result.trials) == 3 and result.best.held_out_value is not None and result.grid == []
    assert "held out half" in sweep_search.search_markdown(result)
    assert len(search_figure(result).data) == 2
    kept = evaluate_panel.kept_point(session, None)  # Use this point: the best proposal's settings
    assert kept.settings == result.best.settings
    status = merge_panel.run_merge(session, config, kept.settings)
    assert "ties" in status  # the point's recipe, as its report names the models, is the merge's
    assert workspace.recorded_recipe(session, session.merge.recipe).to_dict() == result.best.recorded.to_dict()
