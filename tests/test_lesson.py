"""The Lesson tab on the tiny LM zoo: the task vectors' cosine, conflicts per layer beside the random line, a worked
example from the most conflicting tensor (what the scored merge's method does to real entries), and the merge's score
per task."""

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
    # the preset starts with task arithmetic, which the lesson then scores: the worked example merges that way
    assert "| entry | τ math | τ japanese | signs | merged τ |" in example and "conflict" in example
    assert "merged by **task_arithmetic**" in example and "trimmed" not in example and "elected" not in example
    assert "No score yet" in score
    merge_panel.merge_if_none(session, config)
    evaluate(session, config, None, 5)
    table = interference_panel.lesson_score_markdown(session)
    assert f"merge #{session.merge.version}" in table and "| math |" in table
    # japanese_math has no expert of its own: the row says so and names the best single source there
    composite = session.evaluation.scores["japanese_math"]
    best = max(composite.accuracy_by_source.values())
    leaders = [s for s, v in composite.accuracy_by_source.items() if v == best]
    row = next(line for line in table.splitlines() if line.startswith("| japanese_math |"))
    expected = (f"best single source: {' / '.join(leaders)} {best:.0%}" if best > 0
                else "no single source answers any (all 0%)")
    assert f"no expert of its own; {expected}" in row, row


def _score(expert, by_source, expert_accuracy):
    from evaluation.agreement import TaskScore

    return TaskScore(task="t", expert=expert, examples=10, agreement=None, accuracy=0.5,
                     expert_accuracy=expert_accuracy, normalized_accuracy=None, accuracy_by_source=by_source)


def test_a_task_without_an_expert_shows_the_best_single_source_named():
    cell = interference_panel.reference_cell
    assert cell(_score("math", {"math": 0.9, "japanese": 0.2}, 0.9)) == "90%"
    assert cell(_score(None, {"math": 0.1, "japanese": 0.05}, 0.1)) == (
        "no expert of its own; best single source: math 10%")
    assert cell(_score(None, {"math": 0.3, "japanese": 0.3, "strings": 0.0}, 0.3)).endswith("math / japanese 30%")
    assert cell(_score(None, {}, None)) == "no expert of its own (no source scored)"
    assert cell(_score(None, {"math": 0.0, "japanese": 0.0}, 0.0)) == (
        "no expert of its own; no single source answers any (all 0%)")


def test_the_worked_example_merges_as_the_scored_merge_does(tmp_path):
    """Task arithmetic (the preset's start), then TIES at other weights: each time the example's merged values are
    the scored merge's own weights (the live merge of the same settings) less the base, at the example's entries;
    TIES marks trimmed entries and the elected sign, task arithmetic neither."""
    from evaluation.folder_state import LazyFolderState
    from evaluation.interference import worked_example

    config = HostConfig.detect(hosted=False, models_dir=tmp_path / "models")
    session = new_session()
    models_panel.check_models(session, config, models_panel.ModelsChoice("Zoo", "lm", ["math", "japanese"], "", ""))
    base = LazyFolderState(session.base.path)
    experts = {s.label: LazyFolderState(s.path) for s in session.sources}
    name = "model.layers.1.mlp.down_proj.weight"
    ties = {"method": "ties", "weights": [0.7, 0.4], "params": {"density": 0.5, "lambda": 1.0}, "seed": 0}
    for settings in (None, ties):
        if settings is None:
            merge_panel.merge_if_none(session, config)
        else:
            merge_panel.run_merge(session, config, settings)
        recipe, note = interference_panel.lesson_recipe(session, 0.5)
        assert recipe.merge_method == session.merge.settings.method and note == ""  # the same density: no note
        example = worked_example(base, experts, name, recipe=recipe, num_layers=base.source.num_layers)
        merged = session.live.merge(recipe)[name].float().reshape(-1) - base[name].float().reshape(-1)
        assert example.method == session.merge.settings.method and len(example.rows) == 6
        for row in example.rows:
            assert row["merged"] == pytest.approx(float(merged[row["index"]]), abs=1e-6)
        marked = [row for row in example.rows if row["kept"] is not None and row["elected"] is not None]
        assert len(marked) == (6 if settings is ties else 0)
        text = interference_panel.lesson(session, config, 0.5)[2]
        assert f"merged by **{example.method}**" in text and ("elected sign" in text) == (settings is ties)
    assert example.weights == {"math": 0.7, "japanese": 0.4} and example.density == 0.5
    _, other = interference_panel.lesson_recipe(session, 0.3)
    assert "the scored merge uses 0.5" in other  # the lesson's slider differs from the merge's density: said so


def test_the_lesson_explains_experts_that_change_disjoint_layers(tmp_path):
    """Experts on disjoint layers (as the SmolLM2 family's japanese on 0-9 and math on 10-29) share no changed
    entry: the lesson says which layers each changes and that nothing can conflict, instead of failing to find a
    conflicting tensor; the charts say why they are empty."""
    from safetensors.torch import load_file, save_file

    from tests.factory import make_family

    family = make_family(tmp_path / "family", layers=2)
    base = load_file(str(family.base / "model.safetensors"))
    for layer, folder in enumerate(family.experts):  # expert i keeps its change on layer i only
        tuned = load_file(str(folder / "model.safetensors"))
        kept = {k: (v if f"layers.{layer}." in k else base[k]) for k, v in tuned.items()}
        save_file(kept, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = HostConfig.detect(hosted=False, models_dir=tmp_path / "models")
    session = new_session()
    choice = models_panel.ModelsChoice("Local folders", "lm", [], str(family.base),
                                       "\n".join(str(p) for p in family.experts))
    models_panel.check_models(session, config, choice)
    first, second = (s.label for s in session.sources)
    cosine, conflicts, example, elections, _ = interference_panel.lesson(session, config, 0.5)
    assert "No weight is changed by two experts" in example
    assert f"**{first}** changes layer 0; **{second}** changes layer 1" in example
    assert cosine.data[0].z[0][1] == pytest.approx(0.0)  # disjoint vectors are orthogonal
    assert len(conflicts.data[0].x or ()) == 0  # no layer has a bar
    assert "nothing can conflict" in conflicts.layout.title.text
    assert "no contested entries" in elections.layout.title.text


def test_layer_ranges_read_as_a_person_would():
    ranges = interference_panel._layer_ranges
    assert ranges([str(i) for i in range(10)]) == "layers 0-9"
    assert ranges(["3"]) == "layer 3"
    assert ranges(["0", "1", "5", "none"]) == "layers 0-1, 5 and tensors outside the layers"
    assert ranges(["none"]) == "tensors outside the layers" and ranges([]) == "nothing"
