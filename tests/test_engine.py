"""Streaming engine: the folder it writes is a complete model equal to direct method application, and a failed,
cancelled or killed merge leaves nothing that looks like a finished model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from merging.engine import OutputFolderError, merge_to_folder
from merging.errors import CompatibilityError, MergeCancelled
from merging.methods.registry import get_method
from merging.recipe import load_recipe, resolve_parameters
from merging.sources import open_model
from tests.factory import make_family

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fam(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    family = make_family(root / "f", n_experts=2, dtype=torch.bfloat16)
    twin = root / "expert0_copy"
    shutil.copytree(family.experts[0], twin)
    vocab = make_family(root / "v", n_experts=0, vocab_size=100, dtype=torch.bfloat16, seed=5)
    return {"base": family.base, "a": family.experts[0], "b": family.experts[1], "twin": twin,
            "vocab100": vocab.base}


def ta_recipe(fam, wa=0.7, wb="[0.2, 0.8]", method="task_arithmetic", extra=""):
    density = "" if method == "task_arithmetic" else ", density: 0.5"
    return load_recipe(
        f"merge_method: {method}\nbase_model: {fam['base']}\nmodels:\n"
        f"  - model: {fam['a']}\n    parameters: {{weight: {wa}{density}}}\n"
        f"  - model: {fam['b']}\n    parameters: {{weight: {wb}{density}}}\n{extra}"
    )


def read_folder(folder: Path) -> dict[str, torch.Tensor]:
    with open_model(folder) as source:
        return {n: source.get(n) for n in source.tensor_names()}


def direct_merge(recipe, seed: int = 0) -> dict[str, torch.Tensor]:
    """The method applied tensor by tensor with everything in memory: what the engine must reproduce."""
    method = get_method(recipe.merge_method)
    base = load_file(Path(recipe.base_model) / "model.safetensors")
    others = [load_file(Path(e.model) / "model.safetensors") for e in recipe.merged_models()]
    out = {}
    for name, b in base.items():
        gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode())) if method.random else None
        model_params, params = resolve_parameters(recipe, name, 2)
        out[name] = method.fn(b, [o[name] for o in others], model_params, params, gen).to(b.dtype)
    return out


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for name, tensor in a.items():
        assert tensor.dtype == b[name].dtype and torch.equal(tensor, b[name]), name


def test_output_is_a_complete_model_equal_to_direct_application(fam, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = ta_recipe(fam)
    out = tmp_path / "merged"
    result = merge_to_folder(recipe, out)
    assert result.num_tensors == 21 and result.out_dir == out
    assert_same(read_folder(out), direct_merge(recipe))
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["architectures"] == ["MistralForCausalLM"]
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).is_file(), name
    assert load_recipe(out / "mergekit_config.yml").to_dict() == recipe.to_dict()
    assert load_recipe(out / "mergelab_recipe.yaml").to_dict() == recipe.to_dict()
    assert "merge_method: task_arithmetic" in (out / "README.md").read_text()
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    assert torch.equal(model.state_dict()["lm_head.weight"], read_folder(out)["lm_head.weight"])
    assert AutoTokenizer.from_pretrained(out).chat_template


def test_shown_names_rename_the_models_in_the_card_and_recipe_files_only(fam, tmp_path):
    """What a merged folder tells its readers names the models as they can find them (the app gives Hub ids):
    the merge itself reads the folders."""
    recipe = ta_recipe(fam)
    shown = {str(fam["base"]): "org/base", str(fam["a"]): "org/math"}
    merge_to_folder(recipe, tmp_path / "plain")
    merge_to_folder(recipe, tmp_path / "shown", shown_names=shown)
    assert_same(read_folder(tmp_path / "shown"), read_folder(tmp_path / "plain"))
    assert load_recipe(tmp_path / "shown" / "mergelab_recipe.yaml").to_dict() == recipe.renamed(shown).to_dict()
    assert load_recipe(tmp_path / "shown" / "mergekit_config.yml").to_dict() == recipe.renamed(shown).to_dict()
    card = (tmp_path / "shown" / "README.md").read_text()
    assert "- org/math\n" in card and "`org/base` as the base" in card and str(fam["b"]) in card  # b: not renamed
    assert str(fam["a"]) not in card and str(fam["base"]) not in card


def test_small_shard_size_writes_an_index(fam, tmp_path):
    out = tmp_path / "sharded"
    merge_to_folder(ta_recipe(fam), out, shard_size="10KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == {s.name for s in shards}
    assert all(s.stat().st_size < 10_000 + 4_096 or len(load_file(s)) == 1 for s in shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * 2 for t in read_folder(out).values())
    assert_same(read_folder(out), direct_merge(ta_recipe(fam)))


def test_linear_self_merge_is_bit_for_bit(fam, tmp_path):
    recipe = load_recipe(f"merge_method: linear\nmodels:\n  - model: {fam['a']}\n    parameters: {{weight: 1.0}}\n"
                         f"  - model: {fam['twin']}\n    parameters: {{weight: 3.0}}\n")
    out = tmp_path / "self"
    merge_to_folder(recipe, out)
    assert_same(read_folder(out), read_folder(fam["a"]))


def test_task_arithmetic_weight_zero_is_the_base(fam, tmp_path):
    out = tmp_path / "zero"
    merge_to_folder(ta_recipe(fam, wa=0.0, wb=0.0), out)
    assert_same(read_folder(out), read_folder(fam["base"]))


def test_random_method_same_seed_same_bits(fam, tmp_path):
    recipe = ta_recipe(fam, method="dare_ties")
    merge_to_folder(recipe, tmp_path / "s1", seed=7)
    merge_to_folder(recipe, tmp_path / "s1again", seed=7)
    merge_to_folder(recipe, tmp_path / "s2", seed=8)
    first, again, other = (read_folder(tmp_path / n) for n in ("s1", "s1again", "s2"))
    assert_same(first, again)
    assert_same(first, direct_merge(recipe, seed=7))
    assert not torch.equal(first["model.layers.0.mlp.up_proj.weight"], other["model.layers.0.mlp.up_proj.weight"])


def test_out_dtype_is_applied_to_tensors_and_config(fam, tmp_path):
    out = tmp_path / "f32"
    result = merge_to_folder(ta_recipe(fam, extra="out_dtype: float32\n"), out)
    assert result.out_dtype == "float32"
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert all(t.dtype == torch.float32 for t in read_folder(out).values())


def test_tokenizer_source_base_cuts_vocabulary_rows(fam, tmp_path):
    recipe = load_recipe(
        f"merge_method: task_arithmetic\nbase_model: {fam['base']}\ntokenizer_source: base\nmodels:\n"
        f"  - model: {fam['a']}\n    parameters: {{weight: 1.0}}\n"
        f"  - model: {fam['vocab100']}\n    parameters: {{weight: 0.0}}\n"
    )
    with pytest.raises(CompatibilityError):  # without the resolution the mismatch stops the merge up front
        merge_to_folder(load_recipe(recipe.to_yaml().replace("tokenizer_source: base\n", "")), tmp_path / "no")
    assert not (tmp_path / "no").exists()
    out = tmp_path / "vocab"
    merge_to_folder(recipe, out)
    merged, expert = read_folder(out), read_folder(fam["a"])
    assert merged["model.embed_tokens.weight"].shape == (96, 32)
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 96
    assert_same(merged, expert)  # weight 1 on expert a, 0 on the 100-token model: exactly expert a


def _no_leftovers(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_cancel_leaves_nothing(fam, tmp_path):
    cancel = threading.Event()
    seen = []

    def progress(p):
        seen.append(p)
        if p.tensor_index == 3:
            cancel.set()

    with pytest.raises(MergeCancelled):
        merge_to_folder(ta_recipe(fam), tmp_path / "cancelled", shard_size="10KB", progress=progress, cancel=cancel)
    assert len(seen) == 3 and seen[-1].bytes_done < seen[-1].bytes_total and seen[-1].eta_s is not None
    _no_leftovers(tmp_path, "cancelled")


def test_failure_mid_merge_leaves_nothing(fam, tmp_path):
    def progress(p):
        if p.tensor_index == 5:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        merge_to_folder(ta_recipe(fam), tmp_path / "failed", progress=progress)
    _no_leftovers(tmp_path, "failed")


def test_existing_folder_is_kept_unless_overwrite(fam, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(OutputFolderError, match="--overwrite"):
        merge_to_folder(ta_recipe(fam), out)
    assert (out / "precious.txt").read_text() == "keep me"
    merge_to_folder(ta_recipe(fam), out, overwrite=True)
    assert not (out / "precious.txt").exists() and (out / "config.json").is_file()
    _no_leftovers(tmp_path, "nothing-else")


def test_killed_merge_leaves_no_finished_looking_folder(fam, tmp_path):
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(ta_recipe(fam).to_yaml())
    out = tmp_path / "killed"
    env = {**os.environ, "MERGELAB_TEST_TENSOR_DELAY_S": "0.3", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "merging", "run", str(recipe_file), str(out), "--shard-size",
                             "5KB", "--quiet"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    temp = tmp_path / f".killed.incomplete-{proc.pid}"
    deadline = time.monotonic() + 600  # a loaded 2-core machine starts Python and torch slowly
    while not list(temp.glob("model-*.safetensors")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the merge ended before it could be killed"
        time.sleep(0.05)
    assert list(temp.glob("model-*.safetensors")), "no shard appeared within 600 s"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    assert not (temp / "config.json").exists()  # what a loader looks for first
    # A later merge into the same folder clears the dead process's leftovers and finishes.
    merge_to_folder(ta_recipe(fam), out)
    assert (out / "config.json").is_file()
    assert not temp.exists()


@pytest.mark.parametrize("method", ["ties", "dare_ties", "della"])
def test_engine_equals_live_merger(fam, tmp_path, method):
    from merging.live import LiveMerger

    recipe = ta_recipe(fam, method=method, extra="out_dtype: bfloat16\n")
    merge_to_folder(recipe, tmp_path / method, seed=3)
    live = LiveMerger(read_folder(fam["base"]), {str(fam["a"]): read_folder(fam["a"]),
                                                 str(fam["b"]): read_folder(fam["b"])}, num_layers=2)
    assert_same(read_folder(tmp_path / method), live.merge(recipe, seed=3))


def test_recipe_chat_template_replaces_the_copied_one(fam, tmp_path):
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    recipe = ta_recipe(fam)
    recipe.chat_template = template
    merge_to_folder(recipe, tmp_path / "templated")
    assert (tmp_path / "templated" / "chat_template.jinja").read_text() == template


def test_tokenizer_source_model_pads_vocabulary_rows_from_it(fam, tmp_path):
    recipe = load_recipe(
        f"merge_method: task_arithmetic\nbase_model: {fam['base']}\ntokenizer_source: {fam['vocab100']}\nmodels:\n"
        f"  - model: {fam['a']}\n    parameters: {{weight: 1.0}}\n"
        f"  - model: {fam['vocab100']}\n    parameters: {{weight: 0.0}}\n"
    )
    out = tmp_path / "vocab100"
    merge_to_folder(recipe, out)
    merged, expert, donor = read_folder(out), read_folder(fam["a"]), read_folder(fam["vocab100"])
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert merged[name].shape == (100, 32)
        assert torch.equal(merged[name][:96], expert[name])  # the shared rows: exactly expert a
        assert torch.equal(merged[name][96:], donor[name][96:])  # new rows: the tokenizer model's, no task vector
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 100


# --- per-task heads: classifier experts over a shared base (the GLUE-teachers case) ----------------------------

SENTENCES = ["the film was not great", "is the pasta good", "we played football all day", "i love this"]


def heads_recipe(family, method="ties", experts=("sentiment", "topic", "question")):
    lines = [f"merge_method: {method}", f"base_model: {family.base}", "models:"]
    lines += [f"  - model: {family.experts[e]}\n    parameters: {{weight: 0.6, density: 0.5}}" for e in experts]
    return load_recipe("\n".join(lines) + "\n")


def test_classifier_heads_merge_to_per_task_folders_equal_to_the_live_path(classifiers, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from merging.live import LiveMerger

    recipe = heads_recipe(classifiers)
    out = tmp_path / "glue"
    result = merge_to_folder(recipe, out, seed=1)
    assert sorted(result.tasks) == ["question", "sentiment", "topic"]
    assert sorted(p.name for p in (out / "tasks").iterdir()) == ["question", "sentiment", "topic"]
    assert result.tasks["topic"] == out / "tasks" / "topic"
    assert any("Per-task heads" in n for n in result.notes)

    # The app's in-memory path: LiveMerger over the shared tensors, loaded into each expert's own model.
    base = read_folder(classifiers.base)
    experts = {str(classifiers.experts[t]): read_folder(classifiers.experts[t]) for t in result.tasks}
    live = LiveMerger(base, experts, num_layers=2)
    merged = live.merge(recipe, seed=1)
    assert "classifier.weight" in live.unmerged_names

    main = read_folder(out)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForPreTraining"]
    assert_same({n: main[n] for n in merged}, merged)
    for name in set(main) - set(merged):  # the base's own pretraining head: copied, not merged
        assert name.startswith("cls.") and torch.equal(main[name], base[name]), name
    card = (out / "README.md").read_text()
    assert "tasks/sentiment/" in card and "tasks/topic/" in card and "own head" in card

    for task in ("sentiment", "topic"):
        folder, expert_dir = out / "tasks" / task, classifiers.experts[task]
        config, expert_config = (json.loads((d / "config.json").read_text()) for d in (folder, expert_dir))
        assert config["id2label"] == expert_config["id2label"] and config["architectures"] == expert_config[
            "architectures"]
        tensors = read_folder(folder)
        assert torch.equal(tensors["classifier.weight"], experts[str(expert_dir)]["classifier.weight"])
        assert_same({n: tensors[n] for n in merged}, merged)

        saved = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        in_memory = AutoModelForSequenceClassification.from_pretrained(expert_dir).eval()
        state = in_memory.state_dict()
        assert set(merged) <= set(state)
        with torch.no_grad():
            for name, value in merged.items():
                state[name].copy_(value)
        assert saved.config.num_labels == len(expert_config["id2label"])
        tokenizer = AutoTokenizer.from_pretrained(folder)
        batch = tokenizer(SENTENCES, return_tensors="pt", padding=True)
        with torch.no_grad():
            ours, expected = saved(**batch).logits, in_memory(**batch).logits
            unmerged = AutoModelForSequenceClassification.from_pretrained(expert_dir).eval()(**batch).logits
        assert ours.shape == (len(SENTENCES), len(expert_config["id2label"]))
        assert torch.equal(ours, expected), task
        assert not torch.allclose(ours, unmerged)  # the merge changed the encoder: not the expert read back


def test_cancel_while_writing_task_folders_leaves_nothing(classifiers, tmp_path):
    cancel = threading.Event()

    def progress(p):
        if p.tensor_index == p.num_tensors:  # the merged folder is done; the task folders come next
            cancel.set()

    with pytest.raises(MergeCancelled):
        merge_to_folder(heads_recipe(classifiers, experts=("sentiment", "topic")), tmp_path / "heads", progress=progress,
                        cancel=cancel)
    _no_leftovers(tmp_path, "heads")


def test_classifier_with_a_differently_shaped_shared_tensor_is_not_merged(classifiers, tmp_path):
    from safetensors.torch import save_file

    wide = tmp_path / "wide"
    shutil.copytree(classifiers.experts["topic"], wide)
    state = load_file(wide / "model.safetensors")
    state["bert.encoder.layer.0.attention.self.query.weight"] = torch.zeros(48, 64)
    save_file(state, wide / "model.safetensors", metadata={"format": "pt"})
    recipe = load_recipe(f"merge_method: task_arithmetic\nbase_model: {classifiers.base}\nmodels:\n"
                         f"  - model: {classifiers.experts['sentiment']}\n    parameters: {{weight: 0.5}}\n"
                         f"  - model: {wide}\n    parameters: {{weight: 0.5}}\n")
    with pytest.raises(CompatibilityError, match=r"query.weight \(64, 64\) vs \(48, 64\)"):
        merge_to_folder(recipe, tmp_path / "refused")
    _no_leftovers(tmp_path, "refused")


def test_legacy_bert_base_with_gamma_beta_names_merges_like_the_modern_one(classifiers, tmp_path):
    """google-bert/bert-base-uncased stores LayerNorm.gamma/beta; its fine-tunes LayerNorm.weight/bias."""
    from safetensors.torch import save_file

    from merging.preflight import preflight

    legacy = tmp_path / "legacy_base"
    shutil.copytree(classifiers.base, legacy)
    state = load_file(legacy / "model.safetensors")
    renamed = {n.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): t
               for n, t in state.items()}
    assert sum(n.endswith("LayerNorm.gamma") for n in renamed) >= 5
    save_file(renamed, legacy / "model.safetensors", metadata={"format": "pt"})
    modern = heads_recipe(classifiers, experts=("sentiment", "topic"))
    old = load_recipe(modern.to_yaml().replace(str(classifiers.base), str(legacy)))
    report = preflight(old)
    assert report.ok, report.errors
    assert any("gamma/beta read as weight/bias" in w for w in report.warnings)
    merge_to_folder(modern, tmp_path / "modern")
    merge_to_folder(old, tmp_path / "old")
    for sub in ("", "tasks/sentiment", "tasks/topic"):
        assert_same(read_folder(tmp_path / "old" / sub), read_folder(tmp_path / "modern" / sub))


def _tiny_gpt2_family(root: Path) -> tuple[Path, dict[str, Path]]:
    """An old-style GPT-2 base (no `transformer.` prefix, causal-mask buffers) and two classifiers fine-tuned from it
    (`transformer.*` + `score.weight`, 2 and 3 labels), as openai-community/gpt2 and tanganke/gpt2_* are saved."""
    from safetensors.torch import save_file
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    torch.manual_seed(0)
    common = {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 16, "vocab_size": 50, "pad_token_id": 0}
    lm = GPT2LMHeadModel(GPT2Config(**common))
    base = root / "gpt2"
    lm.config.architectures = ["GPT2LMHeadModel"]
    lm.config.save_pretrained(base)
    state = {n.removeprefix("transformer."): t.contiguous() for n, t in lm.state_dict().items()
             if n.startswith("transformer.")}
    for i in range(2):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(16, 16)).view(1, 1, 16, 16)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(state, base / "model.safetensors", metadata={"format": "pt"})
    experts = {}
    for name, labels in (("gpt2_cola", 2), ("gpt2_mnli", 3)):
        model = GPT2ForSequenceClassification(GPT2Config(**common, num_labels=labels))
        model.transformer.load_state_dict(lm.transformer.state_dict())
        with torch.no_grad():
            for p in model.transformer.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        model.save_pretrained(root / name)
        experts[name] = root / name
    return base, experts


def test_old_gpt2_base_with_classifier_experts_merges_per_task(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from merging.live import LiveMerger
    from merging.preflight import preflight

    base, experts = _tiny_gpt2_family(tmp_path)
    recipe = load_recipe(f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n" + "".join(
        f"  - model: {p}\n    parameters: {{weight: 0.5}}\n" for p in experts.values()))
    report = preflight(recipe)
    assert report.ok, report.errors
    assert any("`transformer.` prefix" in w for w in report.warnings)
    assert report.facts["per_task_heads"]["gpt2_mnli"]["heads"] == ["score.weight"]
    out = tmp_path / "merged"
    result = merge_to_folder(recipe, out)
    assert sorted(result.tasks) == ["gpt2_cola", "gpt2_mnli"]
    assert "transformer.h.0.attn.c_attn.weight" in read_folder(out)

    base_state = {f"transformer.{n}": t for n, t in load_file(base / "model.safetensors").items()}
    states = {str(p): read_folder(p) for p in experts.values()}
    merged = LiveMerger(base_state, states, num_layers=2).merge(recipe)
    assert "transformer.h.1.mlp.c_fc.weight" in merged
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 13, 14]])
    for name, folder in experts.items():
        saved = AutoModelForSequenceClassification.from_pretrained(out / "tasks" / name).eval()
        in_memory = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        assert not in_memory.load_state_dict(merged, strict=False).unexpected_keys
        with torch.no_grad():
            ours, expected = saved(input_ids=ids).logits, in_memory(input_ids=ids).logits
        assert ours.shape == (2, saved.config.num_labels) and torch.equal(ours, expected), name


# --- no silent garbage (issue 9, items 5 and 6) ------------------------------------------------------------------


def _recipe_text(fam, method, weights, extra="", base=True):
    models = "".join(f"  - model: {fam[key]}\n    parameters: {{weight: {w}}}\n" for key, w in weights)
    return (f"merge_method: {method}\n" + (f"base_model: {fam['base']}\n" if base else "")
            + f"models:\n{models}{extra}")


def _altered_copy(fam, tmp_path, name, change):
    """A copy of expert `a` whose tensors went through `change` (NaN or huge values in an input model)."""
    from safetensors.torch import save_file

    folder = tmp_path / name
    shutil.copytree(fam["a"], folder)
    state = load_file(folder / "model.safetensors")
    save_file({n: change(t) for n, t in state.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_multislerp_with_opposite_weights_is_refused_and_leaves_nothing(fam, tmp_path):
    from merging.checks import NonFiniteMergeError

    recipe = load_recipe(_recipe_text(fam, "multislerp", [("a", 1), ("b", -1)]))
    with pytest.raises(NonFiniteMergeError) as info:
        merge_to_folder(recipe, tmp_path / "out", shard_size="10KB")
    message = str(info.value)
    assert "tensor '" in message and "sum to 0" in message and "Nothing was written" in message, message
    assert len(message) < 1000
    _no_leftovers(tmp_path, "out")


def test_a_nan_in_an_input_model_is_refused_and_leaves_nothing(fam, tmp_path):
    from merging.checks import NonFiniteMergeError

    fam = {**fam, "a": _altered_copy(fam, tmp_path, "nan", lambda t: t.clone().fill_(float("nan")))}
    recipe = load_recipe(_recipe_text(fam, "task_arithmetic", [("a", 1), ("b", 1)]))
    with pytest.raises(NonFiniteMergeError, match="NaN.*input model"):
        merge_to_folder(recipe, tmp_path / "out")
    _no_leftovers(tmp_path, "out")


def test_values_beyond_the_output_dtype_are_refused(fam, tmp_path):
    from merging.checks import NonFiniteMergeError

    fam = {**fam, "a": _altered_copy(fam, tmp_path, "big", lambda t: t * 1e4)}
    recipe = load_recipe(_recipe_text(fam, "task_arithmetic", [("a", 100), ("b", 1)], "out_dtype: float16\n"))
    with pytest.raises(NonFiniteMergeError, match="float16"):
        merge_to_folder(recipe, tmp_path / "fp16")
    _no_leftovers(tmp_path, "fp16")


@pytest.mark.parametrize("case, text_args", [
    ("huge_weight", ("linear", [("a", 1e308), ("b", 1e308)], "parameters: {normalize: false}\n", False)),
    ("huge_lambda", ("task_arithmetic", [("a", 1), ("b", 1)], "parameters: {lambda: 1e300}\n")),
])
def test_huge_weights_are_refused_with_a_message(fam, tmp_path, case, text_args):
    """Refused by the recipe's bounds or, past them, by the non-finite check: a message either way, nothing left."""
    from merging.errors import MergeLabError

    with pytest.raises(MergeLabError) as info:
        merge_to_folder(_recipe_text(fam, *text_args), tmp_path / case)
    assert "1e+308" in str(info.value) or "1e+300" in str(info.value) or "lambda" in str(info.value)
    _no_leftovers(tmp_path, case)


def test_live_merger_refuses_non_finite_merges_too(fam):
    from merging.checks import NonFiniteMergeError
    from merging.live import LiveMerger

    recipe = load_recipe(_recipe_text(fam, "multislerp", [("a", 1), ("b", -1)]))
    live = LiveMerger(read_folder(fam["base"]), {str(fam["a"]): read_folder(fam["a"]),
                                                 str(fam["b"]): read_folder(fam["b"])}, num_layers=2)
    with pytest.raises(NonFiniteMergeError, match="sum to 0"):
        live.merge(recipe)


def test_linear_with_an_unlisted_base_and_a_global_weight_equals_the_live_merger(fam, tmp_path):
    """mergekit (and LiveMerger) merge an unlisted base_model as one more input of linear; the engine did not."""
    from merging.live import LiveMerger

    recipe = load_recipe(_recipe_text(fam, "linear", [("a", 1.0), ("b", 2.0)], "parameters: {weight: 0.5}\n"))
    assert recipe.merge_inputs()[-1] == str(fam["base"])
    result = merge_to_folder(recipe, tmp_path / "linear")
    live = LiveMerger(read_folder(fam["base"]), {str(fam["a"]): read_folder(fam["a"]),
                                                 str(fam["b"]): read_folder(fam["b"])}, num_layers=2)
    expected = {n: t.to(torch.bfloat16) for n, t in live.merge(recipe).items()}
    assert_same(read_folder(result.out_dir), expected)
    assert_same(read_folder(result.out_dir), direct_merge(recipe))


def test_a_method_never_gets_fewer_tensors_than_parameter_sets():
    from merging.errors import MergeLabError
    from merging.step import MergeStep

    step = MergeStep(load_recipe("merge_method: linear\nmodels:\n" + "".join(
        f"  - model: m{i}\n    parameters: {{weight: 1.0}}\n" for i in range(3))), num_layers=1)
    assert torch.equal(step("w", None, [torch.ones(1)] * 3), torch.ones(1))
    with pytest.raises(MergeLabError, match="2 input tensors but 3 parameter sets"):
        step("w", None, [torch.ones(1)] * 2)


# --- clean failures while writing, and leftovers of killed merges (issue 9, items 8 and 10) ---------------------


class _FullDisk:
    """A file on a disk with `room[0]` bytes free: writes fail with ENOSPC once they are used up."""

    def __init__(self, handle, room: list[int]):
        self.handle, self.room, self.name = handle, room, handle.name

    def write(self, data) -> int:
        self.room[0] -= len(memoryview(data).cast("B"))
        if self.room[0] < 0:
            import errno

            raise OSError(errno.ENOSPC, "No space left on device")
        return self.handle.write(data)

    def close(self) -> None:
        self.handle.close()


def test_a_full_disk_during_run_is_a_message_naming_the_file_and_leaves_nothing(fam, tmp_path, monkeypatch, capsys):
    import builtins

    import merging.shards
    from merging.cli import main

    real_open = builtins.open
    room = [20_000]
    monkeypatch.setattr(merging.shards, "open", lambda *a, **k: _FullDisk(real_open(*a, **k), room), raising=False)
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(ta_recipe(fam).to_yaml())
    with pytest.raises(OutputFolderError) as info:
        merge_to_folder(ta_recipe(fam), tmp_path / "full", shard_size="10KB")
    assert "disk is full" in str(info.value) and ".safetensors" in str(info.value), str(info.value)
    _no_leftovers(tmp_path, "full")
    room[0] = 20_000
    assert main(["run", str(recipe_file), str(tmp_path / "full"), "--quiet", "--shard-size", "10KB"]) == 2
    err = capsys.readouterr().err
    assert "disk is full" in err and "Traceback" not in err
    _no_leftovers(tmp_path, "full")


def test_a_read_only_output_folder_is_a_message(fam, tmp_path, monkeypatch):
    """(Simulated: the tests may run as root, whom permissions do not stop.)"""
    import errno

    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if self.name.startswith(".ro.incomplete"):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(OutputFolderError, match="no permission to write"):
        merge_to_folder(ta_recipe(fam), tmp_path / "ro")
    _no_leftovers(tmp_path, "ro")


def test_an_output_whose_parent_is_a_file_is_refused_before_any_work(fam, tmp_path):
    from merging.preflight import preflight

    (tmp_path / "notes.txt").write_text("a file")
    out = tmp_path / "notes.txt" / "merged"
    with pytest.raises(OutputFolderError, match=r"notes.txt is a file"):
        merge_to_folder(ta_recipe(fam), out)
    report = preflight(ta_recipe(fam), out_dir=out)
    assert not report.ok and any("notes.txt is a file" in e for e in report.errors)
    assert (tmp_path / "notes.txt").read_text() == "a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_an_output_name_too_long_for_the_file_system_is_a_message(fam, tmp_path):
    with pytest.raises(OutputFolderError, match="at most 200 bytes"):
        merge_to_folder(ta_recipe(fam), tmp_path / ("m" * 240))
    assert list(tmp_path.iterdir()) == []


def test_stale_temporary_folders_of_dead_merges_are_removed_and_live_ones_kept(fam, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp_path / f".another-merge.incomplete-{dead.pid}"
        running = tmp_path / f".someone-elses.incomplete-{alive.pid}"
        for folder in (stale, running):
            folder.mkdir()
            (folder / "model.safetensors").write_bytes(b"half")
        merge_to_folder(ta_recipe(fam), tmp_path / "fresh")
        assert not stale.exists()
        assert (running / "model.safetensors").read_bytes() == b"half"
        assert (tmp_path / "fresh" / "config.json").is_file()
    finally:
        alive.kill()
        alive.wait()


def test_a_read_error_during_the_merge_names_the_model_file_not_the_output(fam, tmp_path, monkeypatch):
    import errno

    import merging.sources

    def failing_read(fd, buffers, offset):
        raise OSError(errno.EIO, "Input/output error", str(fam["a"] / "model.safetensors"))

    monkeypatch.setattr(merging.sources.os, "preadv", failing_read)
    with pytest.raises(OutputFolderError, match=r"Reading .*model.safetensors failed .*check that model's files"):
        merge_to_folder(ta_recipe(fam), tmp_path / "out")
    _no_leftovers(tmp_path, "out")
