"""`python -m merging run | check`: exit codes and one-paragraph messages for bad input, with nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from merging.cli import EXIT_USER_ERROR, main
from tests.factory import make_family

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    family = make_family(root / "f", n_experts=2, dtype=torch.bfloat16)
    llama = make_family(root / "llama", arch="llama", n_experts=0, dtype=torch.bfloat16)
    return {"base": family.base, "a": family.experts[0], "b": family.experts[1], "llama": llama.base}


def write_recipe(folder: Path, base, *others, method: str = "ties") -> Path:
    text = f"merge_method: {method}\nbase_model: {base}\nmodels:\n" + "".join(
        f"  - model: {o}\n    parameters: {{weight: 0.5, density: 0.5}}\n" for o in others)
    path = folder / "recipe.yaml"
    path.write_text(text)
    return path


def nothing_written(parent: Path, name: str = "out") -> bool:
    return not (parent / name).exists() and not list(parent.glob(f".{name}.*"))


def test_run_and_check_succeed(fam, tmp_path, capsys):
    recipe = write_recipe(tmp_path, fam["base"], fam["a"], fam["b"])
    assert main(["check", str(recipe)]) == 0
    assert "ready to merge" in capsys.readouterr().out
    assert main(["run", str(recipe), str(tmp_path / "out"), "--seed", "3", "--shard-size", "20KB"]) == 0
    captured = capsys.readouterr()
    assert "Merged 21 tensors" in captured.out
    assert (tmp_path / "out" / "config.json").is_file()
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file()


def test_check_reports_incompatible_models_with_exit_1(fam, tmp_path, capsys):
    recipe = write_recipe(tmp_path, fam["base"], fam["a"], fam["llama"])
    assert main(["check", str(recipe)]) == 1
    out = capsys.readouterr().out
    assert "Architectures differ" in out and "Traceback" not in out


BAD_RUNS = {
    "missing recipe file": (lambda t, f: [str(t / "nope.yaml"), str(t / "out")], "not found"),
    "invalid yaml": (lambda t, f: [_text(t, "merge_method: [oops\n"), str(t / "out")], "YAML"),
    "unknown method": (lambda t, f: [str(write_recipe(t, f["base"], f["a"], method="blend")), str(t / "out")],
                       "blend"),
    "missing model": (lambda t, f: [str(write_recipe(t, f["base"], t / "absent")), str(t / "out")],
                      "does not exist"),
    "incompatible models": (lambda t, f: [str(write_recipe(t, f["base"], f["a"], f["llama"])), str(t / "out")],
                            "Architectures differ"),
    "bad shard size": (lambda t, f: [str(write_recipe(t, f["base"], f["a"])), str(t / "out"), "--shard-size",
                                     "lots"], "Shard size"),
    "unknown device": (lambda t, f: [str(write_recipe(t, f["base"], f["a"])), str(t / "out"), "--device", "tpu"],
                       "Unknown device"),
}


def _text(folder: Path, text: str) -> str:
    path = folder / "recipe.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_bad_input_exits_2_with_a_message_and_writes_nothing(case, fam, tmp_path, capsys):
    make_args, expected = BAD_RUNS[case]
    assert main(["run", *make_args(tmp_path, fam)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and expected in err and "Traceback" not in err
    assert nothing_written(tmp_path)


def test_existing_output_needs_overwrite(fam, tmp_path, capsys):
    recipe = write_recipe(tmp_path, fam["base"], fam["a"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["run", str(recipe), str(out)]) == EXIT_USER_ERROR
    assert "--overwrite" in capsys.readouterr().err and (out / "keep.txt").is_file()
    assert main(["run", str(recipe), str(out), "--overwrite", "--quiet"]) == 0
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


def test_sigterm_mid_merge_cleans_up_and_exits_130(fam, tmp_path):
    import os
    import signal
    import time

    recipe = write_recipe(tmp_path, fam["base"], fam["a"], fam["b"])
    env = {**os.environ, "MERGELAB_TEST_TENSOR_DELAY_S": "0.3", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "merging", "run", str(recipe), str(tmp_path / "out"), "--quiet",
                             "--shard-size", "5KB"], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    temp = tmp_path / f".out.incomplete-{proc.pid}"
    deadline = time.monotonic() + 600  # a loaded 2-core machine starts Python and torch slowly
    while not list(temp.glob("model-*.safetensors")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the merge ended before it could be stopped"
    assert list(temp.glob("model-*.safetensors")), "no shard appeared within 600 s"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130 and "Cancelled" in err and "Traceback" not in err
    assert nothing_written(tmp_path)
