"""The Lesson tab on the tiny LM zoo: the task vectors' cosine, conflicts per layer beside the random line, a worked
example from the most conflicting tensor (what TIES does to real entries), and the merge's score per task."""

from __future__ import annotations

import pytest

from evaluation.interference import random_conflict_rate
from ui import interference_panel, merge_panel, models_panel
from ui.evaluate_panel import evaluate
from ui.hosting import HostConfig
from ui.session import new_session

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_lesson_walks_from_two_experts_to_the_merges_score(tmp_path):
    config = HostConfig.detect(hosted=False, models_dir=tmp_path / "models")
    session = new_session()
    models_panel.check_models(session, config, models_panel.ModelsChoice("Zoo", "lm", ["math", "japanese"], "", ""))
    cosine, conflicts, example, elections, score = interference_panel.lesson(session, config, 0.5)
    assert [bar.name for bar in elections.data] == ["math", "japanese"]
    for layer in range(len(elections.data[0].x)):  # every contested entry is won by exactly one of two tasks
        assert elections.data[0].y[layer] + elections.data[1].y[layer] == pytest.approx(1.0)
    assert cosine.data[0].z[0][0] == pytest.approx(1.0)
    assert conflicts.layout.shapes[0].y0 == random_conflict_rate(2)
    assert "| entry | τ math | τ japanese |" in example and "conflict" in example and "trimmed" in example
    assert "No score yet" in score
    merge_panel.merge_if_none(session, config)
    evaluate(session, config, None, 5)
    table = interference_panel.lesson_score_markdown(session)
    assert f"merge #{session.merge.version}" in table and "| math |" in table
