"""Hostile and malformed recipe text through `python -m merging check | run`: alias bombs, self-referring aliases,
deep nesting, huge integers, other encodings, names the file system refuses, thousands of problems. Each gets one
short message that names the file and what to fix (no traceback, no hang, nothing written), and the exit codes
keep "problems found" (1), "unusable input" (2) and "internal error" (3) apart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from merging import recipe_text
from merging.cli import EXIT_INTERNAL_ERROR, EXIT_PROBLEMS, EXIT_USER_ERROR, main
from merging.errors import RecipeError
from merging.recipe import load_recipe
from tests.factory import make_family

REPO = Path(__file__).resolve().parents[1]
MAX_MESSAGE = 4000  # "no message over a few KB"


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    family = make_family(tmp_path_factory.mktemp("hardening") / "f", n_experts=2, dtype=torch.float32)
    return {"base": family.base, "a": family.experts[0], "b": family.experts[1]}


def good_recipe(fam, weight: str = "0.5") -> str:
    return (f"merge_method: linear\nmodels:\n  - model: {fam['a']}\n    parameters: {{weight: {weight}}}\n"
            f"  - model: {fam['b']}\n    parameters: {{weight: 0.5}}\n")


def billion_laughs() -> str:
    lines = ["merge_method: linear", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, 9):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    return "\n".join(lines + ["models: *a8", ""])


def check_and_run(path: Path, tmp_path: Path, capsys) -> tuple[int, str, int, str]:
    """`check` and `run` on one recipe: their exit codes and everything they printed."""
    check_rc = main(["check", str(path)])
    check_out = "".join(capsys.readouterr())
    run_rc = main(["run", str(path), str(tmp_path / "out"), "--quiet"])
    run_out = "".join(capsys.readouterr())
    return check_rc, check_out, run_rc, run_out


def assert_clean_refusal(path: Path, tmp_path: Path, capsys, *expected: str, named: str | None = None) -> str:
    """check exits 1 and run exits 2, both with a short message naming `named` (default: the recipe file) and
    holding `expected`; nothing is written."""
    check_rc, check_out, run_rc, run_out = check_and_run(path, tmp_path, capsys)
    assert check_rc == EXIT_PROBLEMS, check_out
    assert run_rc == EXIT_USER_ERROR, run_out
    for out in (check_out, run_out):
        assert "Traceback" not in out and len(out) < MAX_MESSAGE, out[:2000]
        assert (named or path.name) in out, out  # the message names the file to fix
        for text in expected:
            assert text in out, out
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    return run_out


# --- item 4: alias expansion, self-reference, nesting, problem counts ------------------------------------------

def test_billion_laughs_is_refused_before_it_expands(tmp_path, capsys):
    path = tmp_path / "laughs.yaml"
    path.write_text(billion_laughs(), encoding="utf-8")
    assert path.stat().st_size < 700  # a few hundred bytes that would expand to 9^9 strings
    assert_clean_refusal(path, tmp_path, capsys, "expands to more than", "aliases")


def test_alias_that_refers_to_itself_is_refused(tmp_path, capsys):
    path = tmp_path / "loop.yaml"
    path.write_text("merge_method: linear\nmodels: &m [a, *m]\n", encoding="utf-8")
    assert_clean_refusal(path, tmp_path, capsys, "refers to itself")


@pytest.mark.parametrize("loader", ["libyaml", "pure-python"])
def test_deep_nesting_is_a_message_not_a_recursion_error(tmp_path, capsys, monkeypatch, loader):
    if loader == "pure-python":  # its composer recurses per level: RecursionError must become the message
        monkeypatch.setattr(recipe_text, "_yaml_loader_class", lambda: yaml.SafeLoader)
    for depth in (40, 5000):
        path = tmp_path / f"deep{depth}.yaml"
        path.write_text("merge_method: linear\nmodels: " + "[" * depth + "]" * depth + "\n", encoding="utf-8")
        assert_clean_refusal(path, tmp_path, capsys, "nested more than")


def test_problem_list_is_capped(fam, tmp_path, capsys):
    models = "".join(f"  - model: m{i}\n" for i in range(150))  # linear needs a weight for each: 150 problems
    path = tmp_path / "many.yaml"
    path.write_text(f"merge_method: linear\nmodels:\n{models}", encoding="utf-8")
    out = assert_clean_refusal(path, tmp_path, capsys, "150 problems", "…and 130 more")
    assert out.count("has no weight") == 20


def test_five_levels_of_aliases_do_not_become_a_hundred_thousand_problems(tmp_path, capsys):
    lines = ["merge_method: linear", "l1: &l1 [" + ", ".join(["{model: q, parameters: {weight: bad}}"] * 10) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(2, 6)]
    path = tmp_path / "five.yaml"
    path.write_text("\n".join(lines + ["models: *l5", ""]), encoding="utf-8")
    assert_clean_refusal(path, tmp_path, capsys)


def test_huge_values_are_cut_in_messages(tmp_path, capsys):
    path = tmp_path / "long.yaml"
    path.write_text(f"merge_method: {'x' * 200_000}\nmodels: [a, b]\ndtype: {'k' * 50_000}\n", encoding="utf-8")
    out = assert_clean_refusal(path, tmp_path, capsys, "unknown merge_method", "not a supported dtype")
    assert "x" * 100 not in out and "k" * 100 not in out


def test_recipe_file_size_is_bounded_before_parsing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(recipe_text, "MAX_RECIPE_BYTES", 1000)
    path = tmp_path / "big.yaml"
    path.write_text("merge_method: linear\nmodels: [a, b]\n" + "# padding\n" * 200, encoding="utf-8")
    assert_clean_refusal(path, tmp_path, capsys, "a recipe may be at most")


# --- item 8: numbers, encodings, names too long --------------------------------------------------------------------

def test_400_digit_weight_says_too_large(fam, tmp_path, capsys):
    path = tmp_path / "digits.yaml"
    path.write_text(good_recipe(fam, "9" * 400), encoding="utf-8")
    assert_clean_refusal(path, tmp_path, capsys, "too large", "models[0].parameters.weight")


def test_integer_beyond_pythons_digit_limit(fam, tmp_path, capsys):
    path = tmp_path / "digits5000.yaml"
    path.write_text(good_recipe(fam, "9" * 5000), encoding="utf-8")
    assert_clean_refusal(path, tmp_path, capsys, "integer with thousands of digits")


@pytest.mark.parametrize("encoding, expected", [
    ("latin-1", "is not UTF-8"), ("utf-16", "UTF-16"), ("utf-16-le", "NUL bytes"), ("utf-32", "UTF-32")])
def test_recipe_in_another_encoding_says_how_to_convert(fam, tmp_path, capsys, encoding, expected):
    path = tmp_path / f"{encoding}.yaml"
    path.write_bytes((good_recipe(fam) + "# café\n").encode(encoding))
    out = assert_clean_refusal(path, tmp_path, capsys, expected)
    assert "UTF-8" in out


def test_utf8_with_byte_order_mark_is_read(fam, tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes(good_recipe(fam).encode("utf-8-sig"))
    assert load_recipe(path).merge_method == "linear"


def test_names_too_long_for_the_file_system(fam, tmp_path, capsys):
    long_recipe = tmp_path / ("r" * 300 + ".yaml")
    assert main(["check", str(long_recipe)]) == EXIT_PROBLEMS
    out = "".join(capsys.readouterr())
    assert "too long" in out and "Traceback" not in out

    model_path = tmp_path / "long_model.yaml"
    model_path.write_text(good_recipe(fam).replace(str(fam["a"]), "m" * 300), encoding="utf-8")
    out = assert_clean_refusal(model_path, tmp_path, capsys, "too long for the file system", named="Model 'mmmm")
    assert "m" * 100 not in out

    recipe = tmp_path / "fine.yaml"
    recipe.write_text(good_recipe(fam), encoding="utf-8")
    long_out = tmp_path / ("o" * 300)
    assert main(["run", str(recipe), str(long_out), "--quiet"]) == EXIT_USER_ERROR
    out = "".join(capsys.readouterr())
    assert "long" in out and "255" in out and "Traceback" not in out  # says the limit to keep to
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith((".o", "oo"))] == []


def test_load_recipe_text_on_one_long_line_is_not_taken_for_a_path():
    text = "{merge_method: linear, models: [" + ", ".join(f"{{model: m{i}}}" for i in range(60)) + "]}"
    with pytest.raises(RecipeError, match="has no weight"):  # not OSError: File name too long
        load_recipe(text)


# --- item 9: exit codes ----------------------------------------------------------------------------------------------

def test_exit_codes_are_documented_in_help():
    result = subprocess.run([sys.executable, "-m", "merging", "check", "--help"], cwd=REPO, capture_output=True, check=False,
                            text=True, timeout=600)
    assert result.returncode == 0
    for line in ("1    check found problems", "2    usage error", "3    internal error", "130  cancelled"):
        assert line in result.stdout, result.stdout


def test_problems_and_crashes_have_different_exit_codes(fam, tmp_path, capsys, monkeypatch):
    path = tmp_path / "recipe.yaml"
    path.write_text(good_recipe(fam), encoding="utf-8")
    assert main(["check", str(path)]) == 0
    capsys.readouterr()

    def crash(*args, **kwargs):
        raise KeyError("a bug")

    import merging.preflight

    monkeypatch.setattr(merging.preflight, "preflight", crash)
    assert main(["check", str(path)]) == EXIT_INTERNAL_ERROR
    err = capsys.readouterr().err
    assert "Internal error (KeyError" in err and "--debug" in err and "Traceback" not in err

    assert main(["--debug", "check", str(path)]) == EXIT_INTERNAL_ERROR
    assert "Traceback" in capsys.readouterr().err
    assert main(["check", str(path), "--debug"]) == EXIT_INTERNAL_ERROR
    assert "Traceback" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["check"])
    assert exited.value.code == EXIT_USER_ERROR


def test_a_folder_or_a_bare_name_given_as_the_recipe(tmp_path, capsys):
    assert main(["check", str(tmp_path)]) == EXIT_PROBLEMS
    assert "is a folder: give the recipe's YAML file" in capsys.readouterr().out
    assert main(["check", str(tmp_path / "recipe")]) == EXIT_PROBLEMS  # no .yaml suffix, not there
    assert "not found: check the path" in capsys.readouterr().out
