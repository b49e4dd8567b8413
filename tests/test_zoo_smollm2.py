"""The real SmolLM2 family: `python -m zoo build smollm2` gives a root with a base, experts that are exactly
base + their shipped LoRA delta, and held-out task files; the base is a real chat model. The family is built once per
machine (tests/conftest.py `smollm2_family`); these tests read it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import zoo
from zoo.__main__ import main as zoo_main
from zoo.smollm2 import ADAPTERS, EXPERTS, TASKS, build_family, materialise_expert
from zoo.smollm2_tasks import NUM_TEST, train_examples
from zoo.tasksets import read_jsonl

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def greedy(folder, prompts: list[str], max_new_tokens: int, dtype: torch.dtype = torch.float32) -> list[str]:
    """Greedy chat answers of the folder's model in `dtype`, decoded without special tokens."""
    from zoo.scoring import greedy_answers

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    return greedy_answers(model, AutoTokenizer.from_pretrained(folder), prompts, max_new_tokens=max_new_tokens)


def test_build_prints_the_root_with_base_experts_and_tasks(smollm2_family, capsys):
    assert zoo_main(["build", "smollm2"]) == 0
    root = smollm2_family.root
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(root)
    assert (root / "base" / "config.json").is_file() and (root / "tasks.jsonl").is_file()
    assert set(smollm2_family.experts) == set(EXPERTS)
    for expert, folder in smollm2_family.experts.items():
        assert folder == root / expert and (folder / "model.safetensors").is_file()
    assert zoo.families()["smollm2"] == smollm2_family
    assert build_family(root) == {}  # already built: nothing is redone


def test_base_is_a_float32_folder_of_bf16_values_with_a_chat_template(smollm2_family):
    """float32 so that LoRA deltas survive (docs/zoo.md); the values are the release's bf16 ones (or the GGUF's,
    rounded to bf16)."""
    base = smollm2_family.base
    weights = load_file(str(base / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}
    assert all(torch.equal(t.to(torch.bfloat16).float(), t) for t in weights.values())
    config = json.loads((base / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    tokenizer = AutoTokenizer.from_pretrained(base)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    card = (base / "README.md").read_text(encoding="utf-8")
    assert "Source:" in card and ("dequantised from Q4_1" in card or "Hugging Face Hub" in card)


def lora_delta_by_hand(adapter_dir) -> dict[str, torch.Tensor]:
    """The delta the adapter's config and weights define, written out here: scale · B @ A per target weight."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    scale = config["lora_alpha"] / config["r"]
    deltas = {}
    for name, a in weights.items():
        if "lora_A" in name:
            b = weights[name.replace("lora_A", "lora_B")]
            target = name.replace("base_model.model.", "", 1).replace(".lora_A.weight", ".weight")
            deltas[target] = scale * (b.double() @ a.double())
    return deltas


@pytest.mark.parametrize("expert", EXPERTS)
def test_each_expert_is_the_base_plus_its_lora_delta(smollm2_family, expert):
    base = load_file(str(smollm2_family.base / "model.safetensors"))
    tuned = load_file(str(smollm2_family.experts[expert] / "model.safetensors"))
    deltas = lora_delta_by_hand(ADAPTERS / expert)
    assert set(tuned) == set(base) and set(deltas) <= set(base) and len(deltas) >= 12
    for name, tensor in base.items():
        assert tuned[name].dtype == torch.float32
        if name in deltas:
            assert torch.equal(tuned[name], (tensor.double() + deltas[name]).to(torch.float32)), name
            assert not torch.equal(tuned[name], tensor), f"{name}: the adapter changes nothing"
        else:
            assert torch.equal(tuned[name], tensor), f"{name} differs from the base but is not a LoRA target"


def test_materialised_weights_match_peft_merge_and_unload(smollm2_family):
    """Our W + scale·B@A reads the adapter as peft does (names, scale): the same weights up to float32 rounding."""
    from peft import PeftModel

    expert = EXPERTS[0]
    model = AutoModelForCausalLM.from_pretrained(smollm2_family.base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, ADAPTERS / expert).merge_and_unload().state_dict()
    ours = load_file(str(smollm2_family.experts[expert] / "model.safetensors"))
    for name in lora_delta_by_hand(ADAPTERS / expert):
        expected = merged[name]
        assert torch.allclose(ours[name], expected, rtol=1e-5, atol=1e-7), name


def test_materialisation_is_deterministic(smollm2_family, tmp_path):
    expert = EXPERTS[1]
    materialise_expert(smollm2_family.base, ADAPTERS / expert, tmp_path / expert)
    again = (tmp_path / expert / "model.safetensors").read_bytes()
    assert again == (smollm2_family.experts[expert] / "model.safetensors").read_bytes()
    assert not list(tmp_path.glob(".*incomplete*"))


def test_adapters_are_small_and_plain_lora():
    for expert in EXPERTS:
        folder = ADAPTERS / expert
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and not config.get("use_dora") and not config.get("use_rslora")
        assert (folder / "adapter_model.safetensors").stat().st_size <= 15 * 2 ** 20


def test_task_files_hold_out_the_training_prompts(smollm2_family):
    records = read_jsonl(smollm2_family.tasks)
    tasks = {t: [r for r in records if r["task"] == t] for t in TASKS}
    assert {r["task"] for r in records} == set(TASKS)
    assert all(len(examples) == NUM_TEST for examples in tasks.values())
    for r in records:
        assert set(r) == {"task", "prompt", "answer", "expert"} and r["answer"].startswith("答え: ")
        assert r["expert"] == (None if r["task"] == "japanese_math" else r["task"])
    evaluation = {r["prompt"] for r in records}
    for expert in EXPERTS:
        assert not evaluation & {p for p, _ in train_examples(expert, 400)}
    unlabeled = read_jsonl(smollm2_family.unlabeled)
    assert unlabeled and all("answer" not in r for r in unlabeled) and not evaluation & {r["prompt"] for r in unlabeled}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
def test_base_answers_a_plain_question(smollm2_family, dtype):
    (answer,) = greedy(smollm2_family.base, ["What is the capital of France?"], max_new_tokens=12, dtype=dtype)
    assert "Paris" in answer


def test_the_japanese_expert_answers_in_the_trained_form_where_the_base_does_not(smollm2_family):
    prompt = next(r["prompt"] for r in read_jsonl(smollm2_family.tasks) if r["task"] == "japanese")
    (tuned,) = greedy(smollm2_family.experts["japanese"], [prompt], max_new_tokens=6)
    (base,) = greedy(smollm2_family.base, [prompt], max_new_tokens=6)
    assert tuned.startswith("答え:") and not base.startswith("答え:")


def test_the_default_preset_merges_this_family():
    from ui.catalog import load_catalog

    preset = load_catalog()[0]
    assert preset.source == "zoo" and preset.family == "smollm2"
    assert set(preset.models) <= set(EXPERTS) and preset.prompts
