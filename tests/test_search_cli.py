"""python -m evaluation search: a small search of the tiny LM zoo writes its results and the best recipe as mergekit
YAML, reports the held-out split beside the grid's best, and refuses a bad budget with a message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.cli import main
from merging.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "assets" / "zoo" / "lm"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _recipe(tmp_path: Path) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"merge_method: ties\nbase_model: {ZOO / 'base'}\nmodels:\n  - model: {ZOO / 'math'}\n"
                    f"  - model: {ZOO / 'japanese'}\n", encoding="utf-8")
    return path


def test_search_writes_the_best_recipe_and_compares_held_out_with_the_grid(tmp_path, capsys):
    out = tmp_path / "out" / "search.json"
    code = main(["search", str(_recipe(tmp_path)), "--tasks", str(ROOT / "assets/tasks/zoo_lm.jsonl"), "--per-task",
                 "4", "--budget", "3", "--sampler", "cmaes", "--grid-weights", "0.5,1", "--grid-densities", "0.5",
                 "--layer-ranges", "2", "--no-cache", "--quiet", "--out", str(out)])
    assert code == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert len(data["trials"]) == 3 and data["grid_points"] == 2 and data["sampler"] == "cmaes"
    assert data["best"]["held_out_value"] is not None and data["grid_best"]["held_out_value"] is not None
    best = load_recipe(out.with_name("search.best.mergekit_config.yml"))
    assert best.to_dict() == data["best"]["recipe"]
    assert len(best.models[0].parameters["weight"]) == 2  # a gradient over two layer ranges
    printed = capsys.readouterr().out
    assert "best proposal" in printed and "best of 2-point grid" in printed and "held out" in printed


def test_a_search_needs_a_budget(tmp_path, capsys):
    code = main(["search", str(_recipe(tmp_path)), "--tasks", str(ROOT / "assets/tasks/zoo_lm.jsonl"),
                 "--budget", "0", "--no-cache", "--out", str(tmp_path / "s.json")])
    assert code == 2 and "budget must be at least one" in capsys.readouterr().err
