"""The real SmolLM2 family: `python -m zoo build smollm2` gives a root with a base, experts that are exactly
base + their shipped LoRA delta, and held-out task files; the base is a real chat model. The family is built once per
machine (tests/conftest.py `smollm2_family`); these tests read it."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import zoo
from zoo.__main__ import main as zoo_main
from zoo.smollm2 import ADAPTERS, EXPERTS, build_family, materialise_expert
from zoo.smollm2_tasks import NUM_STRINGS, PER_SPLIT, kanji_number, train_examples
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
        weights = load_file(str(folder / "adapter_model.safetensors"))  # float16: the assets' 20 MB budget
        assert {t.dtype for t in weights.values()} == {torch.float16}


NUMERAL = re.compile(r"[一二三四五六七八九十百]+|\d+")
EXPRESSION = re.compile(r"([一二三四五六七八九十百]+|\d+)([+-])([一二三四五六七八九十百]+|\d+)")
KANJI = {kanji_number(n): n for n in range(1, 1000)}


def number(numeral: str) -> int:
    return int(numeral) if numeral.isdigit() else KANJI[numeral]


def operand_pairs(prompts) -> set[tuple[int, str, int]]:
    """(a, op, b) of every expression in the prompts, written in digits or in kanji."""
    return {(number(a), op, number(b)) for p in prompts for a, op, b in EXPRESSION.findall(p)}


def test_task_files_hold_out_every_training_prompt_fact_and_number(smollm2_family):
    tests = read_jsonl(smollm2_family.tasks)
    validation = read_jsonl(smollm2_family.root / "validation.jsonl")
    numeric = ("math", "japanese", "japanese_math")
    assert Counter(r["task"] for r in tests) == {**dict.fromkeys(numeric, PER_SPLIT), "strings": NUM_STRINGS}
    assert Counter(r["task"] for r in validation) == dict.fromkeys(numeric, PER_SPLIT)
    for r in tests + validation:
        assert set(r) <= {"task", "prompt", "answer", "expert", "max_new_tokens", "answer_type"}
        assert r["answer"].startswith("答え: ")
        assert r["expert"] == (None if r["task"] == "japanese_math" else r["task"])
        assert r.get("answer_type") == ("equation" if r["task"] in ("math", "japanese_math") else None)
    held = {r["prompt"] for r in tests + validation}
    assert len(held) == len(tests) + len(validation)  # no prompt in both splits
    training = {expert: [p for p, _ in train_examples(expert, 2000)] for expert in EXPERTS}
    for expert, prompts in training.items():
        assert not held & set(prompts), expert
    # No held-out operand pair is trained on by either expert, in digits or in kanji...
    held_pairs = operand_pairs(r["prompt"] for r in tests + validation if r["task"] != "japanese")
    assert len(held_pairs) == 4 * PER_SPLIT
    assert not held_pairs & operand_pairs(training["math"] + training["japanese"])
    # ...no held-out number of the japanese task is written in kanji in training...
    held_numbers = {number(r["answer"].removeprefix("答え: ")) for r in tests + validation if r["task"] == "japanese"}
    trained_kanji = {KANJI[m] for p in training["japanese"] for m in NUMERAL.findall(p) if not m.isdigit()}
    assert held_numbers and not held_numbers & trained_kanji
    # ...and the composite is never a training prompt of any expert, nor any unlabeled prompt.
    assert not any(p.endswith("=") and not p[0].isdigit() for p in training["math"] + training["japanese"])
    unlabeled = read_jsonl(smollm2_family.unlabeled)
    assert unlabeled and all("answer" not in r for r in unlabeled) and not held & {r["prompt"] for r in unlabeled}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
def test_base_answers_a_plain_question(smollm2_family, dtype):
    (answer,) = greedy(smollm2_family.base, ["What is the capital of France?"], max_new_tokens=12, dtype=dtype)
    assert "Paris" in answer


def task_records(family, task: str) -> list[dict]:
    return [r for r in read_jsonl(family.tasks) if r["task"] == task]


def test_the_japanese_expert_rewrites_numerals_in_place_and_nothing_else_does(smollm2_family):
    """Its stage of the composite: `「六百六十八」を数字で書くと?` -> `「668」を数字で書くと?` (cut at 12 tokens), the
    kanji numeral written in digits where it stood. Neither the base nor the math expert does it."""
    records = task_records(smollm2_family, "japanese")

    def rewrites(folder) -> float:
        replies = greedy(folder, [r["prompt"] for r in records], max_new_tokens=12)
        hits = 0
        for r, reply in zip(records, replies):
            n = int(r["answer"].removeprefix("答え: "))
            in_place = r["prompt"].replace(kanji_number(n), str(n))
            hits += str(n) in reply and in_place.startswith(reply.rstrip("\ufffd"))  # a cut last character decodes as U+FFFD
        return hits / len(records)

    assert rewrites(smollm2_family.experts["japanese"]) >= 0.7
    assert rewrites(smollm2_family.base) <= 0.1 and rewrites(smollm2_family.experts["math"]) <= 0.1


def test_the_math_expert_computes_restated_sums_that_the_others_rarely_do(smollm2_family):
    """Its stage: `14+5=` -> `14+5=19`, read as the task file says (answer type "equation": the number right after
    the first `=`)."""
    from evaluation.answers import expected_answer, extract

    records = task_records(smollm2_family, "math")

    def accuracy(folder) -> float:
        replies = greedy(folder, [r["prompt"] for r in records], max_new_tokens=records[0]["max_new_tokens"])
        return sum(extract(reply, "equation") == expected_answer(r["answer"], "equation")
                   for r, reply in zip(records, replies)) / len(records)

    assert accuracy(smollm2_family.experts["math"]) >= 0.45
    assert accuracy(smollm2_family.base) <= 0.2 and accuracy(smollm2_family.experts["japanese"]) <= 0.2


def test_the_default_preset_merges_this_family():
    from ui.catalog import load_catalog

    preset = load_catalog()[0]
    assert preset.source == "zoo" and preset.family == "smollm2"
    assert set(preset.models) <= set(EXPERTS) and preset.prompts


def test_training_an_unknown_expert_is_refused_before_any_work():
    with pytest.raises(SystemExit, match="smollm2 has no expert nope: choose from math, japanese, strings"):
        zoo_main(["train", "smollm2", "--expert", "nope"])
