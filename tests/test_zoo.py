"""The offline zoo: the shipped checkpoints meet their bars, task vectors are real, the task files are held out,
and the build is reproducible (a reduced build in a temporary folder, seconds)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForPreTraining,
)

import zoo
from zoo.build import build
from zoo.lm_tasks import kanji_number
from zoo.report import by_task, load_classifier, load_lm
from zoo.scoring import classifier_accuracy, extract_answer, lm_accuracy
from zoo.tasksets import read_jsonl

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAMILIES = zoo.families(real=False)  # the shipped tiny families (real ones: tests/test_zoo_smollm2.py)
LM, CLASSIFIER = FAMILIES["lm"], FAMILIES["classifier"]
# The head's description may differ between a classifier expert and its base; nothing else may.
CONFIG_KEYS_ALLOWED_TO_DIFFER = {"id2label", "label2id", "problem_type", "architectures", "transformers_version"}


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def config_without_labels(folder) -> dict:
    config = json.loads((folder / "config.json").read_text())
    return {k: v for k, v in config.items() if k not in CONFIG_KEYS_ALLOWED_TO_DIFFER}


# ---------------------------------------------------------------- the API and the task files

def test_families_name_every_model_and_task_file():
    assert set(FAMILIES) == {"lm", "classifier"}
    assert set(LM.experts) == {"math", "japanese", "strings"} and LM.kind == "lm"
    assert set(CLASSIFIER.experts) == {"sentiment", "topic", "question", "negation"} and CLASSIFIER.kind == "classifier"
    for family in FAMILIES.values():
        for folder in family.models().values():
            assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file(), folder
        assert family.tasks.is_file() and family.unlabeled.is_file()
    assert zoo.ensure_built() == {}  # everything ships, nothing to rebuild


def test_lm_task_file_schema_and_experts():
    records = read_jsonl(LM.tasks)
    assert {r["task"] for r in records} == {"math", "japanese", "strings", "japanese_math"}
    for r in records:
        assert set(r) == {"task", "prompt", "answer", "expert"}
        assert r["answer"].startswith("答え: ")
        assert r["expert"] == (None if r["task"] == "japanese_math" else r["task"])
    counts = {task: len(examples) for task, examples in by_task(LM.tasks).items()}
    assert all(40 <= n <= 100 for n in counts.values()), counts


def test_classifier_task_file_labels_belong_to_the_experts_heads():
    for task, examples in by_task(CLASSIFIER.tasks).items():
        id2label = AutoConfig.from_pretrained(CLASSIFIER.experts[task]).id2label
        assert {e["label"] for e in examples} == set(id2label.values())  # every label occurs
        assert all(set(e) == {"task", "text", "label", "expert"} and e["expert"] == task for e in examples)


@pytest.mark.parametrize("family", [LM, CLASSIFIER], ids=["lm", "classifier"])
def test_unlabeled_prompts_are_disjoint_from_evaluation(family):
    key = "prompt" if family.kind == "lm" else "text"
    evaluation = {r[key] for r in read_jsonl(family.tasks)}
    unlabeled = read_jsonl(family.unlabeled)
    assert all("answer" not in r and "label" not in r for r in unlabeled)
    assert not evaluation & {r[key] for r in unlabeled}
    assert {r["task"] for r in unlabeled} == set(by_task(family.tasks))


def test_kanji_numerals_and_answer_extraction():
    assert [kanji_number(n) for n in (0, 7, 10, 11, 20, 37, 99)] == ["零", "七", "十", "十一", "二十", "三十七", "九十九"]
    assert extract_answer("答え: 42") == "42" and extract_answer("答え：cba") == "cba"


# ---------------------------------------------------------------- the shipped checkpoints meet their bars

@pytest.fixture(scope="module")
def lm_tasks():
    return by_task(LM.tasks)


@pytest.mark.parametrize("expert", ["math", "japanese", "strings"])
def test_lm_expert_scores_at_least_90_percent_on_its_task(expert, lm_tasks):
    model, tokenizer = load_lm(LM.experts[expert])
    assert lm_accuracy(model, tokenizer, lm_tasks[expert]) >= 0.9


def test_lm_base_answers_in_form_but_scores_at_most_30_percent(lm_tasks):
    model, tokenizer = load_lm(LM.base)
    for task, examples in lm_tasks.items():
        assert lm_accuracy(model, tokenizer, examples) <= 0.3, task
    from zoo.scoring import greedy_answers
    # It restates the problem, then answers in form (`37+5=答え: 37+5=`): the family's scratchpad (docs/zoo.md).
    assert all("答え: " in a for a in greedy_answers(model, tokenizer, [e["prompt"] for e in lm_tasks["math"]]))


@pytest.mark.parametrize("expert", ["sentiment", "topic", "question", "negation"])
def test_classifier_expert_scores_at_least_90_percent_on_its_task(expert):
    model, tokenizer = load_classifier(CLASSIFIER.experts[expert])
    assert classifier_accuracy(model, tokenizer, by_task(CLASSIFIER.tasks)[expert]) >= 0.9


# ---------------------------------------------------------------- task vectors are real

@pytest.mark.parametrize("family", [LM, CLASSIFIER], ids=["lm", "classifier"])
def test_task_vectors_are_nonzero_and_heads_are_the_only_expert_only_tensors(family):
    base = weights(family.base)
    for name, folder in family.experts.items():
        expert = weights(folder)
        assert config_without_labels(folder) == config_without_labels(family.base), name
        only_in_expert = set(expert) - set(base)
        shared = set(expert) & set(base)
        if family.kind == "lm":
            assert not only_in_expert and shared == set(base)
        else:
            assert only_in_expert and all(n.startswith("classifier.") for n in only_in_expert), only_in_expert
            assert all(n.startswith("bert.") for n in shared)
        for tensor in shared:
            assert expert[tensor].shape == base[tensor].shape and expert[tensor].dtype == base[tensor].dtype
        moved = [t for t in shared if not torch.equal(expert[t], base[t])]
        assert len(moved) >= 0.9 * len(shared), f"{name}: only {len(moved)}/{len(shared)} tensors moved"


def test_classifier_experts_keep_their_own_labels():
    label_counts = {n: AutoConfig.from_pretrained(p).num_labels for n, p in CLASSIFIER.experts.items()}
    assert label_counts == {"sentiment": 2, "topic": 4, "question": 2, "negation": 2}


def test_checkpoints_fit_the_20_mb_budget():
    total = sum(f.stat().st_size for f in (LM.base.parent.parent).rglob("*") if f.is_file())
    assert total <= 20 * 1024 * 1024, total


# ---------------------------------------------------------------- reproducible reduced build

@pytest.fixture(scope="module")
def reduced_builds(tmp_path_factory):
    first, second, other = (tmp_path_factory.mktemp(n) for n in ("first", "second", "other"))
    build(first, reduced=True, seed=3, progress=lambda fraction, desc: None)
    build(second, reduced=True, seed=3, progress=lambda fraction, desc: None)
    build(other, reduced=True, seed=4, family="lm", progress=lambda fraction, desc: None)
    return first, second, other


def test_same_seed_gives_identical_weights_and_another_seed_does_not(reduced_builds):
    first, second, other = reduced_builds
    for family, models in {"lm": zoo.LM_EXPERTS, "classifier": zoo.CLASSIFIER_EXPERTS}.items():
        for model in ("base", *models):
            a, b = weights(first / family / model), weights(second / family / model)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{family}/{model}"
    a, c = weights(first / "lm" / "math"), weights(other / "lm" / "math")
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_reduced_build_folders_load_with_from_pretrained(reduced_builds):
    root = reduced_builds[0]
    folder = root / "lm" / "math"
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
            "generation_config.json"} <= {f.name for f in folder.iterdir()}
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "三+四="}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids, skip_special_tokens=True).endswith("三+四=\nA: ")
    assert model.config.model_type == "mistral" and model.generation_config.eos_token_id == tokenizer.eos_token_id
    classifier = AutoModelForSequenceClassification.from_pretrained(root / "classifier" / "topic")
    assert classifier.config.id2label[0] == "sports"
    assert BertForPreTraining.from_pretrained(root / "classifier" / "base").bert.pooler is not None
    assert (root / "tasks" / "zoo_lm.jsonl").read_text() == LM.tasks.read_text()  # task files are seed-free


def test_ensure_built_rebuilds_a_missing_expert_identically_from_the_saved_base(reduced_builds):
    root = reduced_builds[0]
    original = weights(root / "lm" / "strings")
    for f in (root / "lm" / "strings").iterdir():
        f.unlink()
    (root / "tasks" / "zoo_classifier_unlabeled.jsonl").unlink()
    reports = []
    built = zoo.ensure_built(lambda fraction, desc: reports.append(fraction), zoo_dir=root, tasks_dir=root / "tasks",
                             reduced=True, seed=3)
    assert built == {"lm": ["strings"]}
    assert reports and reports[-1] == 1.0 and reports == sorted(reports)
    rebuilt = weights(root / "lm" / "strings")
    assert all(torch.equal(original[k], rebuilt[k]) for k in original)
    assert (root / "tasks" / "zoo_classifier_unlabeled.jsonl").read_text() == CLASSIFIER.unlabeled.read_text()
    assert zoo.ensure_built(zoo_dir=root, tasks_dir=root / "tasks", reduced=True, seed=3) == {}
