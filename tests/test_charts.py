"""evaluation.charts: figures built from results (objects or their saved dict form) show the numbers given."""

from __future__ import annotations

import json

import torch

from evaluation.agreement import EvalResult, TaskScore
from evaluation.charts import (
    agreement_figure,
    conflict_by_layer_figure,
    cosine_heatmap,
    interference_heatmap,
    kept_heatmap,
    sweep_heatmap,
)
from evaluation.interference import interference_report, random_conflict_rate
from evaluation.sweep import SweepPoint, SweepResult


def _eval_result() -> EvalResult:
    scores = {
        "math": TaskScore("math", "math", 10, 0.9, 0.8, 0.9, 0.8 / 0.9, {"math": 0.9, "japanese": 0.2},
                          {"math": 0.9, "japanese": 0.1}),
        "japanese_math": TaskScore("japanese_math", None, 10, None, 0.4, 0.3, 0.4 / 0.3,
                                   {"math": 0.5, "japanese": 0.6}, {"math": 0.3, "japanese": 0.2}),
    }
    return EvalResult(scores=scores, answers={"math": ["1"] * 10, "japanese_math": ["2"] * 10},
                      outputs={"math": ["答え: 1"] * 10, "japanese_math": ["答え: 2"] * 10})


def test_agreement_bars_per_source_and_accuracy_from_object_or_dict():
    result = _eval_result()
    for given in (result, json.loads(json.dumps(result.to_dict()))):
        fig = agreement_figure(given)
        names = [trace.name for trace in fig.data]
        assert names == ["agrees with math", "agrees with japanese", "accuracy"]
        assert list(fig.data[1].y) == [0.2, 0.6]
        assert list(fig.data[2].y) == [0.8, 0.4]
        assert list(fig.data[0].x) == ["math", "japanese_math"]


def test_a_zero_bar_is_drawn_and_labelled_and_the_title_names_the_merge():
    data = json.loads(json.dumps(_eval_result().to_dict()))
    data["tasks"]["math"]["agreement_by_source"]["japanese"] = 0.0
    data["merge"] = {"version": 7, "mode": "live", "dtype": "float32"}
    fig = agreement_figure(data)
    japanese = fig.data[1]
    assert japanese.y[0] > 0 and japanese.text[0] == "0%" and japanese.customdata[0] == 0.0  # seen, said, true
    assert japanese.y[1] == 0.6 and "merge #7" in fig.layout.title.text
    assert "merge #" not in agreement_figure(_eval_result()).layout.title.text  # no record, no number made up


def _sweep() -> SweepResult:
    result = SweepResult(metric="accuracy", methods=["ties"], weights=[0.5, 1.0], densities=[0.2, 0.8], tasks=["t"])
    for w in (0.5, 1.0):
        for d in (0.2, 0.8):
            value = w * d
            result.points.append(SweepPoint("ties", w, d, {"merge_method": "ties"},
                                            {"agreement": 1 - value, "accuracy": value, "normalized_accuracy": None},
                                            {"t": {"agreement": 1 - value, "accuracy": value}}, {"t": []}, 0.1))
    return result


def test_sweep_heatmap_places_values_and_stars_the_best():
    sweep = _sweep()
    fig = sweep_heatmap(sweep)
    (heat,) = fig.data
    assert list(heat.y) == ["0.5", "1"] and list(heat.x) == ["0.2", "0.8"]
    assert [list(row) for row in heat.z] == [[0.1, 0.4], [0.2, 0.8]]
    # weight 1, density 0.8 has the highest accuracy: its cell keeps its number, with a star
    assert [list(row) for row in heat.text] == [["10%", "40%"], ["20%", "★ 80%"]]
    assert "accuracy" in fig.layout.title.text
    other = sweep_heatmap(sweep.to_dict(), metric="t.agreement")
    assert not any("★" in cell for row in other.data[0].text for cell in row)  # only the sweep's own metric
    assert other.data[0].z[0][0] == 0.9


def _sweep_of(values: dict[tuple[float, float], float]) -> SweepResult:
    result = SweepResult(metric="accuracy", methods=["ties"], weights=[0.5, 1.0], densities=[0.2, 0.8], tasks=["t"])
    for (w, d), value in values.items():
        result.points.append(SweepPoint("ties", w, d, {"merge_method": "ties"},
                                        {"agreement": value, "accuracy": value, "normalized_accuracy": None},
                                        {"t": {"agreement": value, "accuracy": value}}, {"t": []}, 0.1))
    return result


def test_a_sweep_whose_points_all_tie_stars_none_and_says_so():
    """0 % everywhere, or the same share everywhere: no cell starred (no arbitrary best), the title, the results file,
    the Evaluate tab's verdict and point list and the command line's table say why; a partial tie stars each."""
    from ui.evaluate_panel import best_text, point_choices

    grid = [(0.5, 0.2), (0.5, 0.8), (1.0, 0.2), (1.0, 0.8)]
    for value, note in ((0.0, "all 4 scored points are at 0%"), (0.4, "all 4 scored points are at 40%")):
        sweep = _sweep_of(dict.fromkeys(grid, value))
        assert sweep.best_points() == ([], f"{note}: no point is best")
        for given in (sweep, json.loads(json.dumps(sweep.to_dict()))):
            fig = sweep_heatmap(given)
            assert not any("★" in cell for row in fig.data[0].text for cell in row)
            assert note in fig.layout.title.text
        assert sweep.to_dict()["best_note"] == f"{note}: no point is best"
        assert best_text(sweep).startswith("**No best point**") and note in best_text(sweep)
        assert not any("best" in label for label, _ in point_choices(sweep))
    tied = _sweep_of({(0.5, 0.2): 0.2, (0.5, 0.8): 0.6, (1.0, 0.2): 0.6, (1.0, 0.8): 0.4})
    assert [list(row) for row in sweep_heatmap(tied).data[0].text] == [["20%", "★ 60%"], ["★ 60%", "40%"]]
    assert "2 points tie" in best_text(tied) and [label.startswith("★ best") for label, _ in point_choices(tied)] == [
        True, True, False, False]


def test_the_command_lines_sweep_table_stars_the_best_or_says_why_none(capsys):
    from evaluation.cli import _print_best, _print_grid

    grid = [(0.5, 0.2), (0.5, 0.8), (1.0, 0.2), (1.0, 0.8)]
    _print_grid(_sweep_of(dict.fromkeys(grid, 0.0)), "ties")
    _print_best(_sweep_of(dict.fromkeys(grid, 0.0)), "accuracy")
    out = capsys.readouterr().out
    assert "*" not in out and "no best accuracy: all 4 scored points are at 0%: no point is best" in out
    one = _sweep_of({(0.5, 0.2): 0.2, (0.5, 0.8): 0.6, (1.0, 0.2): 0.3, (1.0, 0.8): 0.4})
    _print_grid(one, "ties")
    _print_best(one, "accuracy")
    out = capsys.readouterr().out
    assert out.count("*") == 2 and " *60.0%" in out and "best accuracy = 0.600" in out  # the cell, and the line


def test_sweep_heatmap_of_one_varied_setting_names_it():
    result = SweepResult("accuracy", ["slerp"], [0.25, 0.75], [None], ["t"], axes=("t", None))
    for t in (0.25, 0.75):
        result.points.append(SweepPoint("slerp", t, None, {"merge_method": "slerp"},
                                        {"agreement": t, "accuracy": t, "normalized_accuracy": None},
                                        {"t": {"agreement": t, "accuracy": t}}, {"t": []}, 0.1))
    fig = sweep_heatmap(result)
    assert list(fig.data[0].x) == ["all points"] and fig.layout.yaxis.title.text == "t"
    assert "—" not in list(fig.data[0].y)


def _report():
    base = {"model.layers.0.self_attn.q_proj.weight": torch.zeros(4),
            "model.layers.1.mlp.up_proj.weight": torch.zeros(4),
            "model.embed_tokens.weight": torch.zeros(2)}
    a = {k: torch.tensor([1.0, -1.0, 2.0, 0.5][: v.numel()]) for k, v in base.items()}
    b = {k: torch.tensor([1.0, 1.0, -2.0, 0.5][: v.numel()]) for k, v in base.items()}
    return interference_report(base, {"a": a, "b": b}, density=0.5)


def test_interference_heatmaps_follow_the_report():
    report = _report()
    fig = interference_heatmap(report)
    heat = fig.data[0]
    assert list(heat.x) == ["L0", "L1", "outside"]
    assert list(heat.y) == ["embed", "q_proj", "mlp"]
    cells = {(c["layer"], c["module"]): c["sign_conflict_rate"] for c in report.cells}
    assert heat.z[1][0] == cells[("0", "q_proj")] and heat.z[1][1] is None
    cosine = cosine_heatmap(report.to_dict())
    assert [list(r) for r in cosine.data[0].z] == report.overall["cosine"]
    assert cosine_heatmap(report, layer="0").data[0].z[0][1] == report.by_layer["0"]["cosine"][0][1]
    kept = kept_heatmap(report)
    assert list(kept.data[0].y) == ["a", "b"] and kept.data[0].z[0][0] == report.by_layer["0"]["kept_mass_share"]["a"]
    assert "0.5" in kept.layout.title.text
    # rows run top-down in the same order as the cosine chart's
    assert kept.layout.yaxis.autorange == cosine_heatmap(report).layout.yaxis.autorange == "reversed"
    json.loads(fig.to_json())  # serialisable for gr.Plot


def test_unchanged_modules_are_left_out_and_named_and_layers_meet_the_random_line():
    base = {"model.layers.0.self_attn.q_proj.weight": torch.zeros(4),
            "model.layers.0.self_attn.k_proj.weight": torch.zeros(4),  # no expert changes it: no task vector
            "model.layers.1.self_attn.q_proj.weight": torch.zeros(4)}
    a = {k: (torch.tensor([1.0, -1.0, 2.0, 0.5]) if "q_proj" in k else v) for k, v in base.items()}
    b = {k: (torch.tensor([1.0, 1.0, -2.0, 0.5]) if "q_proj" in k else v) for k, v in base.items()}
    report = interference_report(base, {"a": a, "b": b}, density=1.0)
    fig = interference_heatmap(report)
    assert list(fig.data[0].y) == ["q_proj"] and "k_proj" in fig.layout.title.text  # hidden, and said why
    assert "blank" not in fig.layout.title.text  # no blank cell left to explain
    assert "blank: no such tensor" in interference_heatmap(_report()).layout.title.text  # embed has no layer 0
    bars = conflict_by_layer_figure(report, reference=random_conflict_rate(2))
    assert list(bars.data[0].x) == ["L0", "L1"] and list(bars.data[0].y) == [0.5, 0.5]
    assert bars.layout.shapes[0].y0 == 0.5 and "random" in bars.layout.annotations[0].text


def test_comparison_table_reports_accuracy_and_agreement_apart_with_the_scored_sets_error():
    from evaluation.charts import comparison_markdown
    from evaluation.stats import wilson_interval

    table = comparison_markdown({"learned (samerging)": _eval_result(), "TIES": _eval_result()},
                                {"TIES": "density 0.2, λ 1 (chosen on the learning split)"})
    assert "| learned (samerging) | 80% / 90% | 40% / – | 60% | 90% |" in table  # accuracy / agreement per task
    assert "| TIES | 80% / 90% | 40% / – | 60% | 90% | density 0.2, λ 1 (chosen on the learning split) |" in table
    low, high = wilson_interval(5, 10)
    assert "10 examples per task" in table and f"±{(high - low) / 2:.0%}" in table


def test_comparison_with_the_scored_sets_error_gives_each_mean_its_interval_and_words_differences_by_them():
    from evaluation.charts import comparison_figure, comparison_markdown
    from evaluation.stats import Interval, ScoredSetError

    error = ScoredSetError("learned (samerging)",
                           halfwidth={"learned (samerging)": {"accuracy": 0.12, "agreement": 0.08},
                                      "TIES": {"accuracy": 0.1, "agreement": None}},
                           paired={"TIES": {"accuracy": Interval(0.06, 0.01, 0.11, 20),
                                            "agreement": Interval(0.05, -0.02, 0.12, 10)}})
    scores = {"learned (samerging)": _eval_result(), "TIES": _eval_result()}
    table = comparison_markdown(scores, {}, error)
    assert "| learned (samerging) | 80% / 90% | 40% / – | 60% ±12 | 90% ±8 |" in table
    assert "| TIES | 80% / 90% | 40% / – | 60% ±10 | 90% |" in table  # no error where none is defined
    # accuracy's interval excludes 0: established; agreement's reaches below 0: a higher mean, not established
    assert ("| TIES | +6.0 [+1.0, +11.0] | **higher** (established) | +5.0 [-2.0, +12.0] | no difference established |"
            in table)
    assert "established only when that interval excludes 0" in table
    fig = comparison_figure(scores, error)
    assert [t.name for t in fig.data] == ["accuracy", "agreement"]
    assert list(fig.data[0].error_y.array) == [0.12, 0.1] and list(fig.data[1].error_y.array) == [0.08, 0.0]
    assert comparison_figure(scores).data[0].error_y.array is None  # no error given, none drawn
