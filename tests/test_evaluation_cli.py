"""python -m evaluation run | sweep | interference on tiny factory models; bad input gives one clear message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evaluation.baselines import BASELINE_WEIGHT, WHY_NOT
from evaluation.cli import main
from merging.engine import merge_to_folder
from merging.learned.recipe_io import save_learned
from merging.recipe import Recipe
from tests.factory import make_family

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    mistral = make_family(root / "mistral", n_experts=2, scale=0.3, dtype=torch.bfloat16)
    llama = make_family(root / "llama", arch="llama", n_experts=1)
    tasks = root / "tasks.jsonl"
    # text answers: the tiny random experts write no number, and "no answer" never counts as agreement
    lines = [{"task": "a", "prompt": p, "answer": "答え: 3", "expert": "expert0", "max_new_tokens": 4,
              "answer_type": "text"} for p in ("1+2=", "abc")]
    lines += [{"task": "b", "prompt": p, "expert": "expert1", "max_new_tokens": 4, "answer_type": "text"}
              for p in ("3+4=", "xyz")]
    tasks.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines) + "\n", encoding="utf-8")
    recipe = root / "recipe.yaml"
    recipe.write_text(f"merge_method: ties\nbase_model: {mistral.base}\nmodels:\n"
                      + "".join(f"  - model: {p}\n" for p in mistral.experts), encoding="utf-8")
    return mistral, llama, tasks, recipe


@pytest.fixture(autouse=True)
def answer_cache_in_tmp(tmp_path, monkeypatch):
    """The experts' answers go to a folder of the test's own, never the user's ~/.cache."""
    folder = tmp_path / "answers"
    monkeypatch.setenv("MERGELAB_ANSWER_CACHE", str(folder))
    return folder


def _experts(family) -> list[str]:
    return [arg for i, path in enumerate(family.experts) for arg in ("--expert", f"expert{i}={path}")]


def test_run_scores_a_model_against_its_experts(models, tmp_path, capsys):
    mistral, _, tasks, _ = models
    out = tmp_path / "run.json"
    code = main(["run", "--model", str(mistral.experts[0]), "--tasks", str(tasks), *_experts(mistral),
                 "--out", str(out)])
    assert code == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["tasks"]["a"]["agreement"] == 1.0  # expert0 agrees with itself
    assert data["questions"]["a"] == ["1+2=", "abc"] and len(data["answers"]["b"]) == 2
    assert "agreement" in capsys.readouterr().out


def test_run_writes_the_scores_csv_and_reuses_the_experts_answers(models, tmp_path, answer_cache_in_tmp,
                                                                 monkeypatch):
    import csv

    from evaluation import scoring

    mistral, _, tasks, _ = models
    generated: list[str] = []
    real = scoring.generate_batch
    monkeypatch.setattr(scoring, "generate_batch",
                        lambda model, tok, prompts, *a, **k: generated.extend(prompts) or real(model, tok, prompts, *a, **k))
    argv = ["run", "--model", str(mistral.base), "--tasks", str(tasks), *_experts(mistral)]
    assert main([*argv, "--out", str(tmp_path / "first.json")]) == 0
    assert len(generated) == 2 * 4 + 4  # both experts on all four prompts, then the model
    assert len(list(answer_cache_in_tmp.glob("*.json"))) == 2
    generated.clear()
    assert main([*argv, "--out", str(tmp_path / "second.json")]) == 0
    assert len(generated) == 4  # the experts' answers came from the cache folder
    rows = list(csv.DictReader((tmp_path / "second.csv").open(encoding="utf-8")))
    data = json.loads((tmp_path / "second.json").read_text(encoding="utf-8"))
    assert [r["task"] for r in rows] == ["a", "b"]
    assert float(rows[0]["agreement"]) == data["tasks"]["a"]["agreement"]
    generated.clear()
    assert main([*argv, "--no-cache", "--out", str(tmp_path / "third.json")]) == 0
    assert len(generated) == 2 * 4 + 4


def test_sweep_writes_json_csv_and_best_recipe(models, tmp_path):
    _, _, tasks, recipe = models
    out = tmp_path / "sweep" / "result.json"
    code = main(["sweep", str(recipe), "--tasks", str(tasks), "--weights", "0.5:1.0:0.5", "--densities", "0.5",
                 "--metric", "agreement", "--quiet", "--out", str(out)])
    assert code == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert len(data["points"]) == 2 and data["best"] is not None
    assert out.with_suffix(".csv").is_file() and (out.parent / "result.best.yaml").is_file()


def test_interference_writes_the_report(models, tmp_path, capsys):
    _, _, _, recipe = models
    out = tmp_path / "interference.json"
    assert main(["interference", str(recipe), "--density", "0.3", "--out", str(out)]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["tasks"] == ["expert0", "expert1"] and data["density"] == 0.3
    assert 0.0 <= data["overall"]["sign_conflict_rate"] <= 1.0
    assert "sign conflicts" in capsys.readouterr().out


def test_compare_scores_a_learned_merge_beside_the_baselines(models, tmp_path, capsys):
    """A learned merge whose task-wise λ is the baselines' weight is task arithmetic itself: the two score alike and
    the verdict says why the learned one did not win. TIES scores as its own merged folder does under `run`."""
    mistral, _, tasks, _ = models
    experts = {f"expert{i}": str(path) for i, path in enumerate(mistral.experts)}
    learned = tmp_path / "learned"
    save_learned(learned, base=str(mistral.base), experts=experts, names=[],
                 coefficients=torch.full((len(experts),), BASELINE_WEIGHT), info={"method": "samerging"})
    out = tmp_path / "compare.json"
    assert main(["compare", str(learned), "--tasks", str(tasks), "--out", str(out)]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    scores = data["scores"]
    assert list(scores) == ["learned (samerging)", "task arithmetic", "TIES"]  # no learning split: fixed, said so
    assert all("fixed" in c["how"] for c in data["baseline_choices"].values())
    assert scores["learned (samerging)"]["outputs"] == scores["task arithmetic"]["outputs"]
    assert scores["TIES"]["outputs"] != scores["task arithmetic"]["outputs"]  # the baselines are different merges
    assert data["why_not_better"] == WHY_NOT["samerging"]
    assert set(data["scored_set_halfwidth"]) == set(scores)  # every row has its scored set's error
    same = data["learned_minus_baseline"]["task arithmetic"]  # the same merge: no difference, none established
    assert all(d is None or (d["mean"] == 0.0 and d["low"] <= 0.0 <= d["high"]) for d in same.values())
    assert list(data["learned_minus_baseline"]) == ["task arithmetic", "TIES"]
    printed = capsys.readouterr().out
    assert "mean agreement" in printed and "mean accuracy" in printed
    assert "| learned (samerging) minus |" in printed and "not shown to beat task arithmetic" in printed

    folder = tmp_path / "ties"
    merge_to_folder(Recipe.from_dict(data["baselines"]["TIES"]), folder)
    assert main(["run", "--model", str(folder), "--tasks", str(tasks), "--out", str(tmp_path / "ties.json"),
                 *_experts(mistral)]) == 0
    by_engine = json.loads((tmp_path / "ties.json").read_text(encoding="utf-8"))
    assert by_engine["outputs"] == scores["TIES"]["outputs"]
    assert by_engine["summary"] == scores["TIES"]["summary"]


def test_compare_chooses_the_baselines_on_the_learning_split(models, tmp_path):
    """learned.json's learning inputs choose each baseline's settings (agreement there), never the scored tasks."""
    mistral, _, tasks, _ = models
    experts = {f"expert{i}": str(path) for i, path in enumerate(mistral.experts)}
    learned = tmp_path / "learned"
    inputs = {"expert0": ["5+1=", "hello"], "expert1": ["2+2=", "zz"]}
    save_learned(learned, base=str(mistral.base), experts=experts, names=[],
                 coefficients=torch.full((len(experts),), 0.7), info={"method": "samerging", "learning_inputs": inputs})
    out = tmp_path / "compare.json"
    assert main(["compare", str(learned), "--tasks", str(tasks), "--out", str(out)]) == 0
    data = json.loads(out.read_text(encoding="utf-8"))
    assert list(data["scores"]) == ["learned (samerging)", "task arithmetic", "task arithmetic, task-wise λ", "TIES"]
    for choice in data["baseline_choices"].values():
        assert choice["how"] == "chosen on the learning split"
        best = max(t["learning_split_agreement"] for t in choice["tried"])
        assert choice["learning_split_agreement"] == best  # the chosen settings score best on the learning split
    uniform = data["baseline_choices"]["task arithmetic"]
    assert len(uniform["tried"]) == 4  # UNIFORM_GRID
    weights = data["baselines"]["task arithmetic, task-wise λ"]["models"]
    assert len(weights) == 2


def test_compare_refuses_a_folder_that_is_not_a_learned_merge(models, tmp_path, capsys):
    _, _, tasks, _ = models
    _fails(["compare", str(tmp_path), "--tasks", str(tasks), "--out", str(tmp_path / "c.json")],
           "is not a learned merge", capsys)
    (tmp_path / "recipe.yaml").write_text("merge_method: task_arithmetic\n", encoding="utf-8")
    (tmp_path / "learned.json").write_text('{"experts": {}}', encoding="utf-8")  # no method
    _fails(["compare", str(tmp_path), "--tasks", str(tasks), "--out", str(tmp_path / "c.json")],
           "is not readable as a learned merge's summary", capsys)


def _fails(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_task_file_is_one_clear_message(models, tmp_path, capsys):
    mistral, _, _, _ = models
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task": "a", "prompt": "1+2="}\n{"task": "a", "answer": "3"}\n', encoding="utf-8")
    _fails(["run", "--model", str(mistral.base), "--tasks", str(bad), "--out", str(tmp_path / "o.json")],
           'line 2: give exactly one of "prompt"', capsys)


def test_empty_task_set_is_refused(models, tmp_path, capsys):
    mistral, _, _, _ = models
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    _fails(["run", "--model", str(mistral.base), "--tasks", str(empty), "--out", str(tmp_path / "o.json")],
           "the task set is empty", capsys)


def test_expert_of_another_architecture_is_refused(models, tmp_path, capsys):
    mistral, llama, tasks, _ = models
    _fails(["run", "--model", str(mistral.base), "--tasks", str(tasks), "--expert", f"expert0={llama.experts[0]}",
            "--expert", f"expert1={mistral.experts[1]}", "--out", str(tmp_path / "o.json")],
           "has model_type='llama'", capsys)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--expert", "nonsense"], "must be NAME=DIR"),
        (["--weights", "1:0:1"], "must be at least start"),
        (["--weights", "0:1e308:1"], "more points than can be counted"),
        (["--densities", "0:1:1e-7"], "density grid has 10,000,001 points"),
        (["--weights", "nan:1:0.1"], "must be a finite number, not nan"),
        (["--weights", "0:1:0.001", "--densities", "0:1:0.05"], "1,001 × 21 points"),
        (["--metric", "speed"], "Unknown metric"),
    ],
)
def test_bad_sweep_arguments(models, tmp_path, capsys, argv, message):
    _, _, tasks, recipe = models
    if argv[0] == "--expert":
        _fails(["run", "--model", str(recipe.parent / "mistral" / "base"), "--tasks", str(tasks), *argv,
                "--out", str(tmp_path / "o.json")], message, capsys)
    else:
        _fails(["sweep", str(recipe), "--tasks", str(tasks), "--out", str(tmp_path / "o.json"), *argv], message,
               capsys)


def test_module_entry_point_exits_non_zero_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "evaluation", "interference", str(tmp_path / "missing.yaml"), "--out",
         str(tmp_path / "o.json")], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 2
    assert "error:" in result.stderr and "Traceback" not in result.stderr
