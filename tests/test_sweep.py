"""evaluation.sweep: grids, per-point recipes, in-memory sweeps scored on one model instance, results files."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

import evaluation.agreement as agreement_module
from evaluation.errors import SweepError
from evaluation.sweep import grid_size, parse_grid, parse_grids, point_recipe, prepare_sweep, run_sweep
from evaluation.tasks import tasks_from_records
from merging.recipe import Recipe, load_recipe
from tests.factory import make_family

PROMPTS = ["1+2=", "abc", "3+4=", "hello"]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("sweep"), n_experts=2, scale=0.3, dtype=torch.bfloat16)


def _tasks():
    records = []
    for prompt in PROMPTS:
        records.append({"task": "a", "prompt": prompt, "answer": "ab", "expert": "expert0", "answer_type": "text",
                        "max_new_tokens": 4})
        records.append({"task": "b", "prompt": prompt, "expert": "expert1", "answer_type": "text",
                        "max_new_tokens": 4})
    return tasks_from_records(records)


def _recipe(family, method="ties", experts=None):
    experts = family.experts if experts is None else experts
    return Recipe.from_dict({"merge_method": method, "base_model": str(family.base),
                             "models": [{"model": str(p)} for p in experts]})


@pytest.mark.parametrize(
    ("spec", "values"),
    [("0.2:1.0:0.2", [0.2, 0.4, 0.6, 0.8, 1.0]), ("0.1:0.35:0.1", [0.1, 0.2, 0.3]), ("0.5", [0.5]),
     ("0.3, 0.9", [0.3, 0.9]), ([1, 0.5], [1.0, 0.5])],
)
def test_parse_grid(spec, values):
    assert parse_grid(spec) == values


@pytest.mark.parametrize(("spec", "message"), [("1:0:0.1", "must be at least start"), ("0:1:0", "step must be"),
                                               ("a:b:c", "start:stop:step"), ("x,y", "numbers"), ("", "No")])
def test_bad_grids_say_how_to_write_them(spec, message):
    with pytest.raises(SweepError, match=message):
        parse_grid(spec)


@pytest.mark.parametrize(
    ("spec", "message"),
    [("nan:1:0.1", "start .* finite"), ("0:inf:1", "stop .* finite"), ("0:1:nan", "step .* finite"),
     ("0:1:-0.5", "step must be positive"), ("0:1:5e-324", "finer than"), ("0.5,inf", "finite"),
     ([0.5, float("nan")], "finite"), ([True], "numbers"), (None, "must be text")],
)
def test_non_finite_and_non_positive_grids_are_refused_naming_the_field(spec, message):
    with pytest.raises(SweepError, match=message):
        parse_grid(spec, "weight")


@pytest.mark.parametrize(("spec", "count"), [("0:1e308:1", math.inf), ("-1e308:1e308:1", math.inf),
                                             ("0:1:1e-7", 10_000_001), ("0.2:1.0:0.2", 5), ("1,2,3", 3)])
def test_grid_size_is_counted_by_arithmetic(spec, count):
    assert grid_size(spec) == count


@pytest.mark.parametrize("spec", ["0:1e308:1", "0:1:1e-7", "0:1e9:1", ",".join(["1"] * 3000)])
def test_huge_grids_are_refused_from_their_count_before_any_list_is_built(spec, monkeypatch):
    # A range of 10 million points built as a list takes seconds and hundreds of MB; refusing it must take
    # neither: round() (which builds each point) is never called for a refused spec.
    import evaluation.sweep as sweep_module

    calls = []
    monkeypatch.setattr(sweep_module, "round", lambda *a: calls.append(a) or a[0], raising=False)
    with pytest.raises(SweepError, match="at most 64 are allowed"):
        parse_grid(spec, "weight", max_points=64)
    assert calls == []
    assert len(parse_grid("0:1:0.25", max_points=5)) == 5  # at the limit is allowed (and round() is used)
    assert len(calls) == 5


def test_two_axis_grid_is_limited_in_all():
    assert parse_grids("0:1:0.5", "0.1,0.2", max_points=6) == ([0.0, 0.5, 1.0], [0.1, 0.2])
    assert parse_grids("0:1:0.5", None, max_points=3) == ([0.0, 0.5, 1.0], [])
    with pytest.raises(SweepError, match="3 × 3 points; at most 8"):
        parse_grids("0:1:0.5", "1,2,3", max_points=8)
    with pytest.raises(SweepError, match="density grid has more points than can be counted"):
        parse_grids("0:1:0.5", "0:1e308:1", max_points=8, column_name="density")


def test_point_recipe_sets_weight_and_density_where_the_method_has_them(family):
    template = _recipe(family)
    ties = point_recipe(template, "ties", 0.4, 0.6).to_dict()
    assert all(m["parameters"] == {"weight": 0.4, "density": 0.6} for m in ties["models"])
    assert ties["parameters"] == {"normalize": False}  # else equal weights would divide out
    linear = point_recipe(template, "linear", 0.4, 0.6).to_dict()
    assert all(m["parameters"] == {"weight": 0.4} for m in linear["models"])
    assert "base_model" not in linear  # linear mixes the experts only
    kept = Recipe.from_dict({**template.to_dict(), "parameters": {"normalize": True}})
    assert point_recipe(kept, "ties", 0.4, 0.6).parameters == {"normalize": True}  # the recipe's own choice
    sce = point_recipe(template, "sce", 0.4, 0.6).to_dict()
    assert sce["parameters"] == {"select_topk": 0.6} and all("parameters" not in m for m in sce["models"])


def test_weight_one_task_arithmetic_reproduces_the_expert_and_zero_the_base(family):
    setup = prepare_sweep(_recipe(family, "task_arithmetic", experts=family.experts[:1]), _tasks())
    assert setup.evaluator.tasks.task_names == ["a"]  # task b's expert is not in the recipe
    result = run_sweep(setup.template, setup.merger, setup.evaluator, weights=[0.0, 1.0], densities=[0.5],
                       metric="agreement")
    assert [(p.weight, p.density) for p in result.points] == [(0.0, None), (1.0, None)]  # no density axis
    by_weight = {p.weight: p for p in result.points}
    assert by_weight[1.0].scores["a"]["agreement"] == 1.0
    assert result.best is by_weight[1.0]
    base_answers = setup.evaluator.score_state(setup.merger.base).answers
    assert by_weight[0.0].answers == base_answers


def test_sweep_grid_progress_results_files_and_reuse(family, tmp_path, monkeypatch):
    calls = []
    real = agreement_module.generate_tasks
    monkeypatch.setattr(agreement_module, "generate_tasks", lambda *a, **k: calls.append(1) or real(*a, **k))
    setup = prepare_sweep(_recipe(family), _tasks())
    seen = []
    result = run_sweep(setup.template, setup.merger, setup.evaluator, weights=parse_grid("0.5:1.0:0.5"),
                       densities=[0.3, 1.0], methods=["ties", "linear"], metric="b.agreement",
                       progress=lambda fraction, text: seen.append((fraction, text)))
    assert len(result.points) == 4 + 2  # ties: 2 x 2; linear: 2 weights, no density
    assert len(calls) == 2 + 6  # both experts once, then one call per point
    assert seen[-1][0] == 1.0 and [f for f, _ in seen] == sorted(f for f, _ in seen)
    best = result.best
    assert best.value("b.agreement") == max(p.scores["b"]["agreement"] for p in result.points)
    weights, densities, z = result.grid("ties")
    assert weights == [0.5, 1.0] and densities == [0.3, 1.0] and len(z) == 2 and len(z[0]) == 2

    written = result.write(tmp_path / "out" / "sweep.json")
    data = json.loads(written["json"].read_text(encoding="utf-8"))
    assert data["best"]["recipe"] == best.recipe
    assert len(data["points"]) == 6 and data["points"][0]["recipe"]["merge_method"] == "ties"
    assert len(data["points"][0]["answers"]["a"]) == len(PROMPTS)  # each question's extracted answer
    assert data["questions"]["a"] == PROMPTS
    rows = list(csv.DictReader(written["csv"].open(encoding="utf-8")))
    assert len(rows) == 6 and "a.accuracy" in rows[0]
    assert load_recipe(written["yaml"]).to_dict() == best.recipe  # the hand-in recipe
    by_task = list(csv.DictReader(written["tasks_csv"].open(encoding="utf-8")))  # one column per task
    assert list(by_task[0]) == ["method", "weight", "density", "a", "b", "mean agreement"]
    assert [float(r["b"]) for r in by_task] == [p.scores["b"]["agreement"] for p in result.points]


def test_sweep_can_stop_early(family):
    setup = prepare_sweep(_recipe(family), _tasks())
    fractions: list[float] = []
    result = run_sweep(setup.template, setup.merger, setup.evaluator, weights=[0.5, 1.0], densities=[0.5],
                       progress=lambda fraction, text: fractions.append(fraction),
                       should_stop=lambda: any(f > 0 for f in fractions))  # stop once a point is done
    assert len(result.points) == 1


def test_unknown_metric_or_task_is_refused(family):
    setup = prepare_sweep(_recipe(family), _tasks())
    with pytest.raises(SweepError, match="Unknown metric"):
        run_sweep(setup.template, setup.merger, setup.evaluator, weights=[1.0], densities=[1.0], metric="speed")
    with pytest.raises(SweepError, match="task 'zzz'"):
        run_sweep(setup.template, setup.merger, setup.evaluator, weights=[1.0], densities=[1.0],
                  metric="zzz.accuracy")


def test_the_weight_axis_changes_the_merge(family):
    recipe = _recipe(family)
    recipe.out_dtype = "float32"  # bf16 sources merge to bf16 by default; the linearity check needs float32 output
    setup = prepare_sweep(recipe, _tasks())
    half = setup.merger.merge(point_recipe(setup.template, "ties", 0.5, 0.5))
    full = setup.merger.merge(point_recipe(setup.template, "ties", 1.0, 0.5))
    name = "model.layers.0.self_attn.q_proj.weight"
    base = setup.merger.base[name]
    assert torch.allclose(full[name] - base, 2 * (half[name] - base), atol=1e-5)  # w scales the merged delta
