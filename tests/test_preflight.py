"""Pre-flight report: every incompatibility is named with its fix, and the facts describe the merge's cost."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from merging.preflight import preflight
from tests.factory import make_family


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("preflight")
    family = make_family(root / "mistral", n_experts=2, dtype=torch.bfloat16)
    llama = make_family(root / "llama", arch="llama", n_experts=0, dtype=torch.bfloat16)
    wide = make_family(root / "wide", n_experts=0, hidden=48, dtype=torch.bfloat16)
    big_vocab = make_family(root / "vocab", n_experts=0, vocab_size=100, dtype=torch.bfloat16)
    fp32 = make_family(root / "fp32", n_experts=0, dtype=torch.float32)
    missing = root / "missing_tensor"
    shutil.copytree(family.experts[1], missing)
    state = load_file(missing / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, missing / "model.safetensors", metadata={"format": "pt"})
    return {"base": family.base, "a": family.experts[0], "b": family.experts[1], "llama": llama.base,
            "wide": wide.base, "vocab100": big_vocab.base, "missing": missing, "fp32": fp32.base}


def recipe(base, *others, method="task_arithmetic", extra=""):
    lines = [f"merge_method: {method}", f"base_model: {base}", "models:"]
    lines += [f"  - model: {o}\n    parameters: {{weight: 0.5}}" for o in others]
    return "\n".join(lines) + "\n" + extra


def test_compatible_models_give_an_ok_report_with_facts(models, tmp_path):
    report = preflight(recipe(models["base"], models["a"], models["b"]), out_dir=tmp_path / "out")
    assert report.ok and not report.errors
    facts = report.facts
    assert facts["num_tensors"] == 21
    assert facts["output_dtype"] == "bfloat16"
    base_bytes = facts["models"][str(models["base"])]["bytes"]
    assert facts["output_bytes"] == base_bytes
    assert facts["read_bytes"] == 3 * base_bytes  # base and two experts, every tensor
    assert facts["memory_needed_bytes"] > 0 and facts["memory_available_bytes"] > facts["memory_needed_bytes"]
    assert facts["disk_free_bytes"] > 0 and facts["estimated_seconds"] > 0
    assert facts["models"][str(models["a"])]["role"] == "merged"
    assert "base" in facts["models"][str(models["base"])]["role"]
    assert "ready to merge" in report.to_markdown()
    json.dumps(report.to_dict())  # the UI and `check --json` serialise it


def test_architecture_mismatch_is_named(models):
    report = preflight(recipe(models["base"], models["a"], models["llama"]))
    assert not report.ok
    assert any("Architectures differ" in e and "LlamaForCausalLM" in e for e in report.errors)
    assert "problem" in report.to_markdown()


def test_shape_mismatch_names_the_tensors(models):
    report = preflight(recipe(models["base"], models["a"], models["wide"]))
    assert not report.ok
    shape_errors = [e for e in report.errors if "shapes" in e]
    assert shape_errors and "lm_head.weight (96, 32) vs (96, 48)" in shape_errors[0]
    assert str(models["wide"]) in shape_errors[0]


def test_missing_tensor_is_named(models):
    report = preflight(recipe(models["base"], models["a"], models["missing"]))
    assert not report.ok
    assert any("lacks 1 tensor" in e and "model.layers.1.mlp.up_proj.weight" in e for e in report.errors)


def test_vocabulary_mismatch_names_both_resolutions(models):
    report = preflight(recipe(models["base"], models["a"], models["vocab100"]))
    assert not report.ok
    vocab = [e for e in report.errors if "Vocabulary sizes differ" in e]
    assert len(vocab) == 1 and "share a tokenizer" in vocab[0] and "tokenizer_source: base" in vocab[0]
    assert "model.embed_tokens.weight" in vocab[0] and "lm_head.weight" in vocab[0]
    assert not any("shapes" in e for e in report.errors)  # reported once, as a vocabulary problem
    assert report.facts["vocab_sizes"][str(models["vocab100"])] == 100


def test_tokenizer_source_base_resolves_the_vocabulary(models):
    report = preflight(recipe(models["base"], models["a"], models["vocab100"], extra="tokenizer_source: base\n"))
    assert report.ok, report.errors
    assert any("cut or padded to 96" in w for w in report.warnings)


def test_bad_recipes_are_reported_not_raised(models, tmp_path):
    unknown = preflight(recipe(models["base"], models["a"], method="no_such_method"))
    assert not unknown.ok and "no_such_method" in unknown.errors[0]
    absent = preflight(recipe(models["base"], tmp_path / "nowhere"))
    assert not absent.ok and "does not exist" in absent.errors[0]
    broken = preflight("merge_method: [unclosed\n")
    assert not broken.ok and "YAML" in broken.errors[0]


def test_memory_shortage_is_an_error(models, monkeypatch):
    import merging.preflight as pf

    monkeypatch.setattr(pf, "available_bytes", lambda device: 1000)
    report = preflight(recipe(models["base"], models["a"]))
    assert not report.ok and any("RAM" in e and "free" in e for e in report.errors)


def test_mixed_dtypes_warn_and_promote(models):
    report = preflight(recipe(models["base"], models["a"], models["fp32"]))
    assert report.ok, report.errors
    assert any("dtypes differ" in w and "float32" in w for w in report.warnings)
    assert report.facts["output_dtype"] == "float32"  # bf16 with fp32 is computed and written in fp32
    assert not preflight(recipe(models["base"], models["a"], models["fp32"], extra="dtype: float32\n")).warnings


# --- per-task heads: classifier experts over a shared base (the GLUE-teachers case) ----------------------------


def _altered_expert(src, dst, name, new_shape=None, drop=False):
    """A copy of expert `src` whose tensor `name` is reshaped (zeros of `new_shape`) or dropped."""
    shutil.copytree(src, dst)
    state = load_file(dst / "model.safetensors")
    if drop:
        del state[name]
    else:
        state[name] = torch.zeros(new_shape, dtype=state[name].dtype)
    save_file(state, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_classifier_heads_are_a_warning_not_an_error(classifiers, tmp_path):
    e = classifiers.experts
    report = preflight(recipe(classifiers.base, e["sentiment"], e["topic"], e["question"], method="ties"),
                       out_dir=tmp_path / "out")
    assert report.ok, report.errors
    heads = [w for w in report.warnings if "Per-task heads, not merged" in w]
    assert len(heads) == 1 and "read through its own head" in heads[0]
    assert "classifier.weight" in heads[0] and "tasks/<task>/" in heads[0]
    assert not any("Architectures differ" in w for w in report.warnings)
    facts = report.facts["per_task_heads"]
    assert sorted(facts) == ["question", "sentiment", "topic"]
    assert facts["topic"]["heads"] == ["classifier.bias", "classifier.weight"]
    assert facts["topic"]["architecture"] == "BertForSequenceClassification"
    # The output is the merged base-class folder plus one folder per task: more than the base alone.
    base_bytes = report.facts["models"][str(classifiers.base)]["bytes"]
    assert report.facts["output_bytes"] > 3 * base_bytes
    assert report.facts["num_tensors"] == len(open_names(classifiers.base))
    assert "Per-task heads" in report.to_markdown()
    json.dumps(report.to_dict())


def open_names(folder):
    from merging.sources import open_model

    with open_model(folder) as source:
        return source.tensor_names()


def test_classifier_with_a_differently_shaped_shared_tensor_is_refused(classifiers, tmp_path):
    e = classifiers.experts
    name = "bert.encoder.layer.0.intermediate.dense.weight"
    wide = _altered_expert(e["topic"], tmp_path / "wide", name, new_shape=(100, 64))
    report = preflight(recipe(classifiers.base, e["sentiment"], wide))
    assert not report.ok
    shape_errors = [x for x in report.errors if "shapes" in x]
    assert shape_errors and f"{name} (128, 64) vs (100, 64)" in shape_errors[0]
    assert len(report.errors) == 1  # the heads themselves are not blamed: only the shared tensor's shape


def test_classifier_missing_a_layer_tensor_or_another_architecture_is_refused(classifiers, models, tmp_path):
    e = classifiers.experts
    name = "bert.encoder.layer.1.output.dense.weight"
    holed = _altered_expert(e["topic"], tmp_path / "holed", name, drop=True)
    report = preflight(recipe(classifiers.base, e["sentiment"], holed))
    assert not report.ok and len(report.errors) == 1
    assert "lacks 1 tensor" in report.errors[0] and name in report.errors[0] and "cls." not in report.errors[0]
    mistral = preflight(recipe(classifiers.base, e["sentiment"], models["a"]))
    assert not mistral.ok and any("Architectures differ" in x for x in mistral.errors)


def test_old_config_without_model_type_still_counts_as_a_head_model(classifiers, tmp_path):
    old = tmp_path / "old_sentiment"
    shutil.copytree(classifiers.experts["sentiment"], old)
    config = json.loads((old / "config.json").read_text())
    del config["model_type"]  # configs saved by transformers 2.x
    (old / "config.json").write_text(json.dumps(config))
    report = preflight(recipe(classifiers.base, old, classifiers.experts["topic"]))
    assert report.ok, report.errors
    assert sorted(report.facts["per_task_heads"]) == ["old_sentiment", "topic"]


# --- broken model folders: a message naming the file, never a traceback (issue 9, item 8) ----------------------


def _broken_copy(src, dst, breaker):
    shutil.copytree(src, dst)
    breaker(dst)
    return dst


def _write(name, data):
    return lambda folder: (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def _header_list(folder):
    header = b"[1, 2, 3]   "
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)


def _truncate(folder):
    shard = folder / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])


BROKEN_FOLDERS = {
    "config_is_a_list": (_write("config.json", "[1, 2]"), "config.json holds a JSON list"),
    "config_not_json": (_write("config.json", "{nope"), "config.json is not valid JSON"),
    "index_not_json": (_write("model.safetensors.index.json", "{"), "index.json is not valid JSON"),
    "index_without_map": (_write("model.safetensors.index.json", '{"weight_map": [1]}'), "is not a weights index"),
    "index_escaping_folder": (_write("model.safetensors.index.json", '{"weight_map": {"w": "../../etc/passwd"}}'),
                              "is not a weights index"),
    "header_is_a_list": (_header_list, "header is a JSON list"),
    "truncated_shard": (_truncate, "is truncated"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_FOLDERS))
def test_broken_model_folders_are_named_by_check_and_refused_by_run(models, tmp_path, case):
    from merging.engine import merge_to_folder
    from merging.errors import MergeLabError

    breaker, expected = BROKEN_FOLDERS[case]
    broken = _broken_copy(models["a"], tmp_path / case, breaker)
    report = preflight(recipe(models["base"], broken, models["b"]))
    assert not report.ok and any(expected in e and str(broken) in e for e in report.errors), report.errors
    with pytest.raises(MergeLabError, match=expected):
        merge_to_folder(recipe(models["base"], broken, models["b"]), tmp_path / "out")
    assert not [p for p in tmp_path.iterdir() if p.name == "out" or p.name.startswith(".out.")]
