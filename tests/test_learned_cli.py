"""`python -m merging learn` end to end on tiny models, and the saved recipe reproducing the learned θ(λ)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from merging.errors import MergeLabError, TaskSetError
from merging.learned.cli import read_inputs
from merging.learned.coefficients import TaskVectors
from merging.learned.recipe_io import load_coefficients, weight_setting
from merging.recipe import evaluate_setting, load_recipe, validate_recipe
from tests.factory import make_family

pytestmark = pytest.mark.usefixtures("one_torch_thread")


PROMPTS = ["1+2=", "3+4=", "5-1=", "a b c", "二+三=", "9+9=", "x y", "7-2="]


def write_prompts(path: Path, experts: list[str], per_task: int) -> Path:
    lines = [{"task": e, "prompt": PROMPTS[(i + k) % len(PROMPTS)], "expert": e}
             for k in range(per_task) for i, e in enumerate(experts)]
    lines.append({"task": "composite", "prompt": "1+1=", "expert": None})
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """One real `python -m merging learn` run (in-process through merging.cli.main, progress bar on) on a tiny
    Mistral family with two experts."""
    from merging.cli import main

    root = tmp_path_factory.mktemp("learn")
    family = make_family(root / "models", n_experts=2, scale=0.05)
    prompts = write_prompts(root / "prompts.jsonl", ["math", "strings"], 4)
    out = root / "recipe"
    argv = ["learn", "--method", "samerging", "--base", str(family.base),
            "--expert", f"math={family.experts[0]}", "--expert", f"strings={family.experts[1]}",
            "--prompts", str(prompts), "--examples-per-task", "4", "--batch-size", "2", "--steps", "4",
            "--max-new-tokens", "5", "--rho", "0.07", "--out", str(out)]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(argv)
    return family, out, (rc, stdout.getvalue(), stderr.getvalue())


def test_cli_learns_and_writes_a_recipe_folder(learned):
    _, out, (rc, stdout, stderr) = learned
    assert rc == 0, stderr
    assert "Learned (2, " in stdout and "recipe:" in stdout
    assert "samerging" in stderr and "4/4" in stderr  # the tqdm bar
    info = json.loads((out / "learned.json").read_text())
    assert info["method"] == "samerging" and info["tasks"] == ["math", "strings"] and len(info["losses"]) == 4
    tasks, names, lam = load_coefficients(out)
    assert tasks == ["math", "strings"] and lam.shape == (2, len(names))
    assert not torch.allclose(lam, torch.full_like(lam, 0.3))  # it moved from the initial value
    validate_recipe(load_recipe(out / "recipe.yaml"))


def test_engine_applies_the_recipe_to_the_learned_weights(learned, tmp_path):
    from merging.engine import merge_to_folder

    family, out, _ = learned
    _, names, lam = load_coefficients(out)
    base = load_file(str(family.base / "model.safetensors"))
    experts = [load_file(str(p / "model.safetensors")) for p in family.experts]
    expected = TaskVectors(base, experts, names).merged(lam)
    merge_to_folder(out / "recipe.yaml", tmp_path / "merged")
    merged = load_file(str(next((tmp_path / "merged").glob("*.safetensors"))))
    assert set(names) <= set(merged)
    for n in names:
        torch.testing.assert_close(merged[n], expected[n], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(merged[n], base[n]) for n in names)


def test_live_merger_applies_the_recipe_to_the_learned_weights(learned):
    from merging.live import LiveMerger

    family, out, _ = learned
    _, names, lam = load_coefficients(out)
    base = load_file(str(family.base / "model.safetensors"))
    experts = {str(p): load_file(str(p / "model.safetensors")) for p in family.experts}
    expected = TaskVectors(base, list(experts.values()), names).merged(lam)
    merged = LiveMerger(base, experts, num_layers=2).merge(load_recipe(out / "recipe.yaml"))
    for n in names:
        torch.testing.assert_close(merged[n], expected[n], rtol=1e-5, atol=1e-6)


def test_mergekit_reads_the_recipe_and_builds_the_same_weights(learned, tmp_path):
    """The exported YAML is mergekit's own format: mergekit 0.1.5 (the reference) merges it to the learned θ(λ)."""
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    family, out, _ = learned
    _, names, lam = load_coefficients(out)
    base = load_file(str(family.base / "model.safetensors"))
    expected = TaskVectors(base, [load_file(str(p / "model.safetensors")) for p in family.experts], names).merged(lam)
    config = MergeConfiguration.model_validate(yaml.safe_load((out / "recipe.yaml").read_text()))
    run_merge(config, str(tmp_path / "mk"), MergeOptions(copy_tokenizer=False))
    merged = {}
    for f in (tmp_path / "mk").glob("*.safetensors"):
        merged.update(load_file(str(f)))
    for n in names:
        torch.testing.assert_close(merged[n].float(), expected[n], rtol=1e-5, atol=1e-6)


def test_exact_name_filters_survive_substring_matching():
    names = ["layers.1.mlp.weight", "model.layers.1.mlp.weight", "a.weight", "a.weight_scale", "model.layers.11.mlp.weight"]
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    setting = weight_setting(names, values)
    for n, v in zip(names, values):
        assert evaluate_setting(setting, n, 0.0) == v
    assert evaluate_setting(setting, "classifier.bias", 0.0) == 0.0  # not learned: the base value


def test_read_inputs_takes_each_experts_own_lines(tmp_path):
    path = write_prompts(tmp_path / "p.jsonl", ["a", "b"], 3)
    inputs = read_inputs(path, ["a", "b"], 2)
    assert inputs == {"a": PROMPTS[0:2], "b": PROMPTS[1:3]}
    with pytest.raises(TaskSetError, match="--examples-per-task"):
        read_inputs(path, ["a", "c"], 2)
    (tmp_path / "bad.jsonl").write_text('{"task": "a"\n')
    with pytest.raises(TaskSetError, match="bad.jsonl:1"):
        read_inputs(tmp_path / "bad.jsonl", ["a"], 1)


def test_cli_user_errors_print_a_fix_without_traceback(tmp_path):
    from merging.cli import main

    with pytest.raises(MergeLabError, match="NAME=DIR"):
        from merging.learned.cli import _parse_experts
        _parse_experts(["nodir"])
    rc = main(["learn", "--base", str(tmp_path), "--expert", "a=" + str(tmp_path), "--prompts",
               str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")])
    assert rc == 2
