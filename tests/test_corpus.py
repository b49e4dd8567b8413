"""An adversarial corpus (issue 9, "Done when"): over 200 malformed or hostile recipes and model folders, generated
here (nothing shipped), each run through `python -m merging check` and `python -m merging run` in this one process
(`merging.cli.main`, one command per test), with a time bound per case.

For every case: no traceback and no internal error (exit 3), no hang, no message over a few KB, and a refused `run`
leaves nothing on disk (no output folder, no hidden temporary folder).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from merging.cli import EXIT_INTERNAL_ERROR, main
from merging.methods.registry import list_methods
from tests.factory import make_family

MAX_OUTPUT_CHARS = 4000  # "no message over a few KB" (a successful check prints its report: also under this)
CASE_SECONDS = 120  # far above what any case takes, even on a loaded 2-core machine; past it is a hang


@dataclass
class Case:
    name: str
    recipe: bytes  # the recipe file's bytes
    out_name: str = "out"  # the run's output folder (inside the case's own folder)
    prepare: Callable[[Path], None] | None = None  # makes the output's surroundings (a file in the way, ...)


class CaseTimeout(BaseException):
    """Raised by the alarm in the case being run (a BaseException, so no handler on the way swallows it)."""


# --- the models ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[list[Case], Path]:
    root = tmp_path_factory.mktemp("corpus")
    family = make_family(root / "family", n_experts=2, dtype=torch.float32)
    models = {"base": family.base, "a": family.experts[0], "b": family.experts[1]}
    broken = {name: _broken_copy(family.experts[0], root / "broken" / name, breaker)
              for name, breaker in BROKEN_FOLDERS.items()}
    cases = recipe_text_cases(models) + structure_cases(models) + parameter_cases(models)
    cases += folder_cases(models, broken) + output_cases(models)
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases, root


def test_the_corpus_has_at_least_200_cases(corpus):
    cases, _ = corpus
    assert len(cases) >= 200, len(cases)


@pytest.mark.parametrize("command", ["check", "run"])
def test_every_case_gets_a_short_message_and_a_refused_run_leaves_nothing(corpus, command, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # Hub-like names fail at once, as on a machine without network
    monkeypatch.setenv("MERGELAB_DEBUG", "1")  # an internal error would print its traceback: caught below
    cases, root = corpus
    failures: list[str] = []
    for case in cases:
        folder = root / "cases" / command / case.name
        folder.mkdir(parents=True)
        recipe = folder / "recipe.yaml"
        recipe.write_bytes(case.recipe)
        if case.prepare is not None:
            case.prepare(folder)
        before = sorted(p.name for p in folder.iterdir())
        argv = (["check", str(recipe), "--out-dir", str(folder / case.out_name)] if command == "check"
                else ["run", str(recipe), str(folder / case.out_name), "--quiet", "--shard-size", "20KB"])
        code, output, seconds = _run_bounded(argv)
        problem = _problem(code, output, seconds)
        if command == "run" and code != 0:
            after = sorted(p.name for p in folder.iterdir())
            if after != before:
                problem = problem or f"a refused run left {sorted(set(after) - set(before))}"
        if command == "run" and code == 0:
            problem = problem or _garbage(folder / case.out_name)
        if problem:
            failures.append(f"{case.name}: {problem}")
        shutil.rmtree(folder, ignore_errors=True)
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures[:40])


def _run_bounded(argv: list[str]) -> tuple[int | None, str, float]:
    """main(argv) in this process, output captured, stopped by an alarm after CASE_SECONDS."""
    buffer = io.StringIO()

    def expire(signum, frame):
        raise CaseTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(CASE_SECONDS)
    started = time.monotonic()
    code: int | None = None
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse
                code = exit_.code if isinstance(exit_.code, int) else 2
    except CaseTimeout:
        code = None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, buffer.getvalue(), time.monotonic() - started


def _garbage(out: Path) -> str | None:
    """What is wrong with a folder a run reported as merged: missing config, or non-finite tensors."""
    if not (out / "config.json").is_file():
        return "the run exited 0 without a config.json in its output folder"
    for shard in sorted(out.glob("*.safetensors")):
        bad = [name for name, tensor in load_file(shard).items()
               if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
        if bad:
            return f"the run exited 0 but wrote NaN/inf in {bad[:3]}"
    return None


def _problem(code: int | None, output: str, seconds: float) -> str | None:
    if code is None:
        return f"no answer within {CASE_SECONDS} s (a hang)"
    if "Traceback" in output or code == EXIT_INTERNAL_ERROR:
        return f"internal error (exit {code}): {output[-600:]}"
    if len(output) > MAX_OUTPUT_CHARS:
        return f"{len(output)} characters of output: {output[:300]}…"
    if code not in (0, 1, 2):
        return f"exit status {code}: {output[-300:]}"
    if code != 0 and not output.strip():
        return f"exit {code} without a message"
    return None


# --- recipe text (the hostile YAML cases; merging/recipe_text.py bounds them) ---------------------------------------


def _good(models: dict, weight: str = "0.5") -> str:
    return (f"merge_method: task_arithmetic\nbase_model: {models['base']}\nmodels:\n"
            f"  - model: {models['a']}\n    parameters: {{weight: {weight}}}\n"
            f"  - model: {models['b']}\n    parameters: {{weight: 0.5}}\n")


def _laughs(levels: int, width: int = 9) -> str:
    lines = ["merge_method: linear", "a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    return "\n".join(lines + [f"models: *a{levels - 1}", ""])


def recipe_text_cases(models: dict) -> list[Case]:
    good = _good(models)
    texts: dict[str, bytes] = {
        "billion_laughs": _laughs(9).encode(),
        "aliases_5_levels": _laughs(5).encode(),
        "aliases_in_parameters": (good + "parameters: &p {weight: [1, 2]}\nx: [" + ", ".join(["*p"] * 50) + "]\n"
                                  ).encode(),
        "self_referring_alias": b"merge_method: linear\nmodels: &m [*m]\n",
        "self_referring_mapping": b"merge_method: &m {a: *m}\nmodels: []\n",
        "deep_nesting_lists": ("merge_method: linear\nmodels: " + "[" * 5000 + "]" * 5000 + "\n").encode(),
        "deep_nesting_maps": ("merge_method: linear\nmodels: " + "{a: " * 2000 + "1" + "}" * 2000 + "\n").encode(),
        "deep_nesting_parameters": (good + "parameters: {weight: " + "[" * 200 + "1" + "]" * 200 + "}\n").encode(),
        "latin1": good.replace("task_arithmetic", "task_arithmétic").encode("latin-1"),
        "latin1_comment": ("# café\n" + good).encode("latin-1"),
        "utf16_bom": good.encode("utf-16"),
        "utf16_le_no_bom": good.encode("utf-16-le"),
        "utf32": good.encode("utf-32"),
        "utf8_bom": b"\xef\xbb\xbf" + good.encode(),
        "binary_garbage": bytes(range(256)) * 8,
        "nul_bytes": good.encode().replace(b"\n", b"\x00\n", 1),
        "empty_file": b"",
        "only_a_comment": b"# nothing here\n",
        "only_whitespace": b"   \n\t\n",
        "null_document": b"null\n",
        "a_scalar": b"42\n",
        "a_string": b"just some text\n",
        "a_list": b"- merge_method: linear\n",
        "two_documents": (good + "---\n" + good).encode(),
        "yaml_syntax_error": b"merge_method: [linear\nmodels: {\n",
        "tab_indentation": good.replace("  - model", "\t- model").encode(),
        "python_object_tag": b"merge_method: !!python/object/apply:os.system ['echo hi']\nmodels: []\n",
        "unknown_tag": b"merge_method: !custom linear\nmodels: []\n",
        "int_400_digits_weight": _good(models, "9" * 400).encode(),
        "int_400_digits_negative": _good(models, "-" + "9" * 400).encode(),
        "int_5000_digits": _good(models, "1" * 5000).encode(),
        "float_overflow_literal": _good(models, "1e999").encode(),
        "hex_int_weight": _good(models, "0x7fffffffffffffffffff").encode(),
        "karcher_huge_max_iter": (f"merge_method: karcher\nmodels:\n  - model: {models['a']}\n  - model: {models['b']}\n"
                                  "parameters: {max_iter: 1000000000, tol: 0}\n").encode(),
        "karcher_max_iter_1e9_float": (f"merge_method: karcher\nmodels:\n  - model: {models['a']}\n"
                                       f"  - model: {models['b']}\nparameters: {{max_iter: 1e9, tol: 0}}\n").encode(),
        "karcher_400_digit_max_iter": (f"merge_method: karcher\nmodels:\n  - model: {models['a']}\n"
                                       f"  - model: {models['b']}\nparameters: {{max_iter: {'9' * 400}}}\n").encode(),
        "huge_line": ("merge_method: " + "x" * 200_000 + "\nmodels: []\n").encode(),
        "huge_file": b"# " + b"x" * (5 * 1024 * 1024) + b"\n",
        "many_keys": ("\n".join(f"key{i}: {i}" for i in range(20_000)) + "\n").encode(),
        "many_problems": ("merge_method: linear\nmodels:\n" + "".join(
            f"  - model: /no/such/{i}\n    parameters: {{weight: x{i}}}\n" for i in range(300))).encode(),
        "very_long_model_name": _good(models).replace(str(models["a"]), "/" + "n" * 5000).encode(),
        "model_name_too_long_for_fs": _good(models).replace(str(models["a"]), "/tmp/" + "n" * 300).encode(),
        "model_name_with_nul_escape": _good(models).replace(str(models["a"]), '"bad\\0name"').encode(),
        "control_characters": _good(models).replace("task_arithmetic", '"task\\x1b[31m_arithmetic"').encode(),
        "surrogate_escape": b"merge_method: \"\\ud800\"\nmodels: []\n",
        "emoji_method": "merge_method: 🤖\nmodels: []\n".encode(),
    }
    return [Case(f"text_{name}", data) for name, data in texts.items()]


# --- recipe structure ---------------------------------------------------------------------------------------------


def structure_cases(models: dict) -> list[Case]:
    a, b, base = models["a"], models["b"], models["base"]
    good = _good(models)
    texts: dict[str, str] = {
        "control_good_recipe": good,
        "unknown_method": good.replace("task_arithmetic", "frankenmerge"),
        "method_a_list": good.replace("merge_method: task_arithmetic", "merge_method: [ties]"),
        "method_a_number": good.replace("merge_method: task_arithmetic", "merge_method: 7"),
        "method_a_mapping": good.replace("merge_method: task_arithmetic", "merge_method: {name: ties}"),
        "method_missing": good.replace("merge_method: task_arithmetic\n", ""),
        "method_null": good.replace("merge_method: task_arithmetic", "merge_method: null"),
        "models_missing": f"merge_method: linear\nbase_model: {base}\n",
        "models_empty": "merge_method: linear\nmodels: []\n",
        "models_a_string": f"merge_method: linear\nmodels: {a}\n",
        "models_a_mapping": f"merge_method: linear\nmodels: {{model: {a}}}\n",
        "models_a_number": "merge_method: linear\nmodels: 3\n",
        "model_entry_a_string": f"merge_method: linear\nmodels:\n  - {a}\n",
        "model_entry_a_list": f"merge_method: linear\nmodels:\n  - [{a}]\n",
        "model_entry_null": "merge_method: linear\nmodels:\n  - null\n",
        "model_key_missing": "merge_method: linear\nmodels:\n  - parameters: {weight: 1}\n",
        "model_a_number": "merge_method: linear\nmodels:\n  - model: 12\n    parameters: {weight: 1}\n",
        "model_a_list": f"merge_method: linear\nmodels:\n  - model: [{a}]\n    parameters: {{weight: 1}}\n",
        "model_empty_string": "merge_method: linear\nmodels:\n  - model: ''\n    parameters: {weight: 1}\n",
        "model_missing_folder": "merge_method: linear\nmodels:\n  - model: /no/such/model\n    parameters: {weight: 1}\n",
        "model_hub_like_id": "merge_method: linear\nmodels:\n  - model: someone/some-model\n    parameters: {weight: 1}\n",
        "model_path_traversal": f"merge_method: linear\nmodels:\n  - model: {a}/../../../../etc\n    parameters: {{weight: 1}}\n",
        "model_is_a_file": f"merge_method: linear\nmodels:\n  - model: {a}/config.json\n    parameters: {{weight: 1}}\n",
        "model_is_root": "merge_method: linear\nmodels:\n  - model: /\n    parameters: {weight: 1}\n",
        "model_extra_key": f"merge_method: linear\nmodels:\n  - model: {a}\n    weight: 1\n",
        "model_parameters_a_list": f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: [1]\n",
        "model_parameters_a_string": f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: heavy\n",
        "parameters_a_list": good + "parameters: [1, 2]\n",
        "parameters_a_string": good + "parameters: lots\n",
        "parameters_unknown_key": good + "parameters: {warp_factor: 9}\n",
        "parameters_non_string_key": good + "parameters: {1: 2}\n",
        "base_model_a_list": good.replace(f"base_model: {base}", f"base_model: [{base}]"),
        "base_model_missing_folder": good.replace(f"base_model: {base}", "base_model: /no/such/base"),
        "base_model_missing_for_ties": good.replace(f"base_model: {base}\n", "").replace("task_arithmetic", "ties"),
        "base_listed_as_model": good + f"  - model: {base}\n    parameters: {{weight: 1}}\n",
        "same_model_twice": good + f"  - model: {a}\n    parameters: {{weight: 1}}\n",
        "slerp_three_models": f"merge_method: slerp\nbase_model: {base}\nmodels:\n  - model: {a}\n  - model: {b}\n"
                              f"  - model: {base}\nparameters: {{t: 0.5}}\n",
        "slerp_without_t": f"merge_method: slerp\nbase_model: {base}\nmodels:\n  - model: {a}\n",
        "hundred_models": "merge_method: linear\nmodels:\n" + f"  - model: {a}\n    parameters: {{weight: 1}}\n" * 100,
        "thousand_models": "merge_method: linear\nmodels:\n" + f"  - model: {a}\n    parameters: {{weight: 1}}\n" * 1000,
        "dtype_int8": good + "dtype: int8\n",
        "dtype_unknown": good + "dtype: float128\n",
        "dtype_a_list": good + "dtype: [float32]\n",
        "out_dtype_unknown": good + "out_dtype: float8\n",
        "out_dtype_number": good + "out_dtype: 16\n",
        "tokenizer_source_unknown": good + "tokenizer_source: /no/such/tokenizer\n",
        "tokenizer_source_union": good + "tokenizer_source: union\n",
        "tokenizer_source_a_list": good + "tokenizer_source: [base]\n",
        "tokenizer_source_base_without_base": good.replace(f"base_model: {base}\n", "").replace(
            "task_arithmetic", "linear") + "tokenizer_source: base\n",
        "tokenizer_and_tokenizer_source": good + "tokenizer_source: base\ntokenizer: {source: base}\n",
        "tokenizer_a_string": good + "tokenizer: base\n",
        "chat_template_a_number": good + "chat_template: 5\n",
        "chat_template_huge": good + "chat_template: '" + "{{ x }}" * 20_000 + "'\n",
        "chat_template_a_name": good + "chat_template: chatml\n",
        "slices_unsupported": good + f"slices:\n  - sources:\n      - model: {a}\n        layer_range: [0, 2]\n",
        "unknown_top_level_key": good + "warp: 9\n",
        "non_string_top_level_key": good + "1: 2\n",
        "filter_not_a_string": good + "parameters: {weight: [{filter: 5, value: 1}]}\n",
        "filter_without_value": good + "parameters: {weight: [{filter: mlp}]}\n",
        "filter_value_a_mapping": good + "parameters: {weight: [{filter: mlp, value: {a: 1}}]}\n",
        "gradient_empty": good + "parameters: {lambda: []}\n",
        "gradient_of_strings": good + "parameters: {lambda: [a, b]}\n",
        "gradient_nested": good + "parameters: {lambda: [[1, 2], [3]]}\n",
        "gradient_10000_points": good + "parameters: {lambda: [" + ", ".join(["0.5"] * 10_000) + "]}\n",
    }
    return [Case(f"structure_{name}", text.encode()) for name, text in texts.items()]


# --- every method with hostile parameter values ---------------------------------------------------------------------

HOSTILE_VALUES = {
    "not_a_number": "banana",
    "nan": ".nan",
    "inf": ".inf",
    "negative_huge": "-1e308",
    "huge": "1e308",
    "a_mapping": "{x: 1}",
}


def _method_recipe(models: dict, method, model_value: str | None = None, global_key: str | None = None,
                   global_value: str | None = None, weights: tuple[str, str] = ("0.5", "0.5")) -> str:
    count = max(method.min_models, min(2, method.max_models or 2))
    keys = [models["a"], models["b"]][:count]
    lines = [f"merge_method: {method.name}"]
    if method.base != "ignored":
        lines.append(f"base_model: {models['base']}")
    lines.append("models:")
    for i, key in enumerate(keys):
        settings = []
        if method.param("weight") is not None:
            settings.append(f"weight: {model_value if model_value is not None else weights[i]}")
        elif method.param("t") is not None and method.param("t").scope == "model":
            settings.append("t: 0.5")
        lines.append(f"  - model: {key}" + (f"\n    parameters: {{{', '.join(settings)}}}" if settings else ""))
    globals_ = {}
    t = method.param("t")
    if t is not None and t.scope == "global":
        globals_["t"] = "0.5"
    if global_key is not None:
        globals_[global_key] = global_value
    if globals_:
        lines.append("parameters: {" + ", ".join(f"{k}: {v}" for k, v in globals_.items()) + "}")
    return "\n".join(lines) + "\n"


def parameter_cases(models: dict) -> list[Case]:
    cases = []
    for method in list_methods():
        cases.append(Case(f"method_{method.name}_control", _method_recipe(models, method).encode()))
        if method.param("weight") is not None:
            cases.append(Case(f"method_{method.name}_opposite_weights",
                              _method_recipe(models, method, weights=("1", "-1")).encode()))
            cases.append(Case(f"method_{method.name}_zero_weights",
                              _method_recipe(models, method, weights=("0", "0")).encode()))
            for label in ("not_a_number", "nan", "huge"):
                cases.append(Case(f"method_{method.name}_weight_{label}",
                                  _method_recipe(models, method, model_value=HOSTILE_VALUES[label]).encode()))
        for param in method.params:
            if param.scope != "global" or param.name == "t":
                continue
            for label in ("not_a_number", "nan", "inf", "negative_huge", "huge", "a_mapping"):
                if param.kind in ("bool", "choice") and label not in ("not_a_number", "a_mapping"):
                    continue
                cases.append(Case(f"method_{method.name}_{param.name}_{label}",
                                  _method_recipe(models, method, global_key=param.name,
                                                 global_value=HOSTILE_VALUES[label]).encode()))
    return cases


# --- broken model folders -------------------------------------------------------------------------------------------


def _broken_copy(src: Path, dst: Path, breaker: Callable[[Path], None]) -> Path:
    shutil.copytree(src, dst)
    breaker(dst)
    return dst


def _write(name: str, data: str | bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def _config(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def breaker(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        result = change(config)
        (folder / "config.json").write_text(json.dumps(config if result is None else result))
    return breaker


def _header(header: object, data: bytes = b"", length: int | None = None) -> Callable[[Path], None]:
    def breaker(folder: Path) -> None:
        raw = json.dumps(header).encode()
        size = len(raw) if length is None else length
        (folder / "model.safetensors").write_bytes(struct.pack("<Q", size) + raw + data)
    return breaker


def _tensors(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def breaker(folder: Path) -> None:
        state = load_file(folder / "model.safetensors")
        change(state)
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return breaker


def _remove(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def _truncate(keep: int) -> Callable[[Path], None]:
    def breaker(folder: Path) -> None:
        shard = folder / "model.safetensors"
        shard.write_bytes(shard.read_bytes()[:keep])
    return breaker


def _shard_into_index(index: object) -> Callable[[Path], None]:
    def breaker(folder: Path) -> None:
        (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
        (folder / "model.safetensors.index.json").write_text(json.dumps(index) if not isinstance(index, str)
                                                             else index)
    return breaker


def _first_tensor(change: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict], None]:
    def apply(state: dict) -> None:
        name = next(iter(state))
        state[name] = change(state[name])
    return apply


def _replace_with_file(folder: Path) -> None:
    shutil.rmtree(folder)
    folder.write_text("not a folder")


def _pickle_only(folder: Path) -> None:
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")


_ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
BROKEN_FOLDERS: dict[str, Callable[[Path], None]] = {
    "config_a_list": _write("config.json", "[1, 2, 3]"),
    "config_a_string": _write("config.json", '"config"'),
    "config_null": _write("config.json", "null"),
    "config_not_json": _write("config.json", "{not json"),
    "config_empty": _write("config.json", ""),
    "config_latin1": _write("config.json", '{"name": "caf\xe9"}'.encode("latin-1")),
    "config_missing": _remove("config.json"),
    "config_architectures_a_number": _config(lambda c: c.update(architectures=5)),
    "config_architectures_a_string": _config(lambda c: c.update(architectures="MistralForCausalLM")),
    "config_architectures_of_numbers": _config(lambda c: c.update(architectures=[1, 2])),
    "config_text_config_a_list": _config(lambda c: c.update(text_config=[1])),
    "config_layers_a_string": _config(lambda c: c.update(num_hidden_layers="two")),
    "config_layers_negative": _config(lambda c: c.update(num_hidden_layers=-3)),
    "config_layers_huge": _config(lambda c: c.update(num_hidden_layers=10**30)),
    "config_vocab_a_list": _config(lambda c: c.update(vocab_size=[96])),
    "config_vocab_other": _config(lambda c: c.update(vocab_size=97)),
    "config_model_type_other": _config(lambda c: c.update(model_type="llama", architectures=["LlamaForCausalLM"])),
    "config_deep": _write("config.json", '{"a": ' * 100_000 + "1" + "}" * 100_000),
    "index_not_json": _shard_into_index("{"),
    "index_a_list": _shard_into_index([1]),
    "index_weight_map_a_list": _shard_into_index({"weight_map": [1]}),
    "index_weight_map_numbers": _shard_into_index({"weight_map": {"x": 1}}),
    "index_traversal": _shard_into_index({"weight_map": {"x": "../../../etc/passwd"}}),
    "index_absolute_path": _shard_into_index({"weight_map": {"x": "/etc/passwd"}}),
    "index_missing_shard": _shard_into_index({"weight_map": {"x": "model-00009-of-00009.safetensors"}}),
    "index_empty_map": _shard_into_index({"weight_map": {}}),
    "header_a_list": _header([1, 2, 3]),
    "header_a_string": _header("tensors"),
    "header_null": _header(None),
    "header_entry_a_list": _header({"w": [1]}),
    "header_entry_missing_shape": _header({"w": {"dtype": "F32", "data_offsets": [0, 8]}}, b"\0" * 8),
    "header_shape_strings": _header({"w": {**_ENTRY, "shape": ["2"]}}, b"\0" * 8),
    "header_shape_negative": _header({"w": {**_ENTRY, "shape": [-2]}}, b"\0" * 8),
    "header_shape_huge": _header({"w": {**_ENTRY, "shape": [10**30]}}, b"\0" * 8),
    "header_offsets_reversed": _header({"w": {**_ENTRY, "data_offsets": [8, 0]}}, b"\0" * 8),
    "header_offsets_beyond_file": _header({"w": {**_ENTRY, "shape": [2**20], "data_offsets": [0, 2**22]}}),
    "header_dtype_unknown": _header({"w": {**_ENTRY, "dtype": "Q7"}}, b"\0" * 8),
    "header_dtype_a_list": _header({"w": {**_ENTRY, "dtype": ["F32"]}}, b"\0" * 8),
    "header_length_huge": _header({"w": _ENTRY}, b"\0" * 8, length=2**62),
    "header_length_zero": _header({"w": _ENTRY}, b"\0" * 8, length=0),
    "header_not_json": lambda folder: (folder / "model.safetensors").write_bytes(struct.pack("<Q", 4) + b"{{{{"),
    "header_deep": _header(json.loads("[" * 500 + "]" * 500)),
    "safetensors_empty": _write("model.safetensors", b""),
    "safetensors_4_bytes": _write("model.safetensors", b"\0\0\0\0"),
    "safetensors_truncated_data": _truncate(-100),
    "safetensors_truncated_header": _truncate(40),
    "safetensors_missing": _remove("model.safetensors"),
    "pickle_only": _pickle_only,
    "tensor_missing": _tensors(lambda s: s.pop(next(iter(s)))),
    "tensor_extra": _tensors(lambda s: s.update(extra=torch.zeros(3))),
    "tensor_other_shape": _tensors(_first_tensor(lambda t: torch.zeros(t.shape[0] + 1, *t.shape[1:]))),
    "tensor_other_dtype": _tensors(_first_tensor(lambda t: t.to(torch.float16))),
    "tensor_integer": _tensors(_first_tensor(lambda t: t.to(torch.int32))),
    "tensor_nan": _tensors(_first_tensor(lambda t: torch.full_like(t, float("nan")))),
    "tensor_inf": _tensors(_first_tensor(lambda t: torch.full_like(t, float("inf")))),
    "tensor_huge_values": _tensors(_first_tensor(lambda t: t * 1e38)),
    "folder_is_a_file": _replace_with_file,
}


def folder_cases(models: dict, broken: dict[str, Path]) -> list[Case]:
    cases = []
    for name, folder in broken.items():
        text = _good(models).replace(str(models["a"]), str(folder))
        cases.append(Case(f"folder_{name}", text.encode()))
    return cases


# --- output folders -------------------------------------------------------------------------------------------------


def _file_named(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text("in the way")


def _full_folder(name: str) -> Callable[[Path], None]:
    def prepare(folder: Path) -> None:
        (folder / name).mkdir()
        (folder / name / "keep.txt").write_text("precious")
    return prepare


def output_cases(models: dict) -> list[Case]:
    good = _good(models).encode()
    return [
        Case("output_parent_is_a_file", good, out_name="afile/out", prepare=_file_named("afile")),
        Case("output_is_a_file", good, out_name="out", prepare=_file_named("out")),
        Case("output_exists_not_empty", good, out_name="out", prepare=_full_folder("out")),
        Case("output_name_too_long", good, out_name="o" * 300),
        Case("output_name_long", good, out_name="o" * 220),
        Case("output_dot", good, out_name="."),
        Case("output_nested_missing_parents", good, out_name="a/b/c/out"),
    ]
