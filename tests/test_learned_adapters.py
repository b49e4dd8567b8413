"""Hugging Face adapters: causal LMs distilled on their own greedy continuations, classifiers read through their own
heads on one shared backbone. At λ = e_t (the merged model *is* expert t) task t's KL to its teacher must be zero."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForPreTraining, BertForSequenceClassification

from merging.errors import MergeLabError
from merging.learned.adapters import model_kind, setup_causal_lm, setup_classifier
from merging.learned.api import learn_merge, make_loss
from tests.factory import make_family, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TEXTS = ["a b c", "one two", "x y z z", "hello", "no yes", "q r s", "t u", "v w"]


def make_classifier_family(root, labels=(2, 3, 2)):
    """A BERT pretraining base and fine-tunes with heads of different label counts (base + random task vectors)."""
    torch.manual_seed(0)
    def config(num_labels=2):
        return BertConfig(vocab_size=96, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.0,
                          attention_probs_dropout_prob=0.0, pad_token_id=0, num_labels=num_labels)

    base = BertForPreTraining(config())
    base.save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    experts = {}
    for i, n in enumerate(labels):
        expert = BertForSequenceClassification(config(n))
        state = expert.state_dict()
        for name, w in base.state_dict().items():
            if name in state and state[name].shape == w.shape:
                state[name] = w + 0.1 * torch.randn_like(w)
        state["classifier.weight"] = 3.0 * torch.randn_like(state["classifier.weight"])  # decisive heads
        expert.load_state_dict(state)
        folder = root / f"task{i}"
        expert.save_pretrained(folder)
        tiny_tokenizer().save_pretrained(folder)
        experts[f"task{i}"] = folder
    return root / "base", experts


def kl_at_one_hot(setup, method="samerging"):
    loss = make_loss(setup, method)
    losses = []
    for t in range(len(setup.tasks)):
        setup.vectors.materialize(torch.eye(len(setup.tasks))[t], setup.params)
        with torch.no_grad():
            losses.append([float(loss(u, 0)) for u in range(len(setup.tasks))])
    return losses


def test_classifier_setup_shares_one_backbone_and_keeps_heads(tmp_path):
    base, experts = make_classifier_family(tmp_path)
    assert model_kind(experts["task0"]) == "classifier"
    texts = {name: TEXTS[:4] for name in experts}
    setup = setup_classifier(base, experts, texts, batch_size=4)
    assert not any(n.startswith(("classifier", "cls.")) for n in setup.vectors.names)
    assert any("encoder.layer.1" in n for n in setup.vectors.names)
    assert setup.student_logits(1, 0).shape == (4, 3)  # task 1 through its own 3-label head
    losses = kl_at_one_hot(setup)
    for t, row in enumerate(losses):
        assert row[t] == pytest.approx(0.0, abs=1e-6)  # merged model = expert t: matches teacher t exactly
        assert max(row) > 1e-4  # but not the other teachers


def test_causal_lm_setup_scores_the_teachers_own_continuations(tmp_path):
    family = make_family(tmp_path, n_experts=2, scale=0.2)
    experts = {"a": family.experts[0], "b": family.experts[1]}
    prompts = {"a": ["1+2=", "3+4="], "b": ["a b", "x"]}
    setup = setup_causal_lm(family.base, experts, prompts, batch_size=2, max_new_tokens=4, top_k=8)
    assert setup.vectors.num_tensors == len(setup.params) and setup.num_batches == 1
    rows = setup.student_logits(0, 0).shape[0]
    assert 2 <= rows <= 2 * 4  # one row per continuation token (≤ max_new_tokens each)
    assert setup.teachers[0][0].probs.shape == (rows, 8)
    losses = kl_at_one_hot(setup)
    assert losses[0][0] == pytest.approx(0.0, abs=1e-5) and losses[1][1] == pytest.approx(0.0, abs=1e-5)
    assert losses[0][1] > 1e-3


def test_learn_merge_on_classifiers_lowers_the_kl(tmp_path):
    base, experts = make_classifier_family(tmp_path)
    merge = learn_merge("samerging", base, experts, {n: TEXTS for n in experts}, steps=30, batch_size=8,
                        init=0.3)
    assert merge.coefficients.shape == (3, len(merge.names))
    assert merge.losses[-1] < merge.losses[0]
    uneven = learn_merge("adamerging", base, experts, {"task0": TEXTS, "task1": TEXTS[:3], "task2": TEXTS}, steps=3,
                         batch_size=4)  # task1 has one batch and replays it while the others have two
    assert uneven.setup.num_batches == 2 and len(uneven.losses) == 3
    with pytest.raises(MergeLabError, match="no unlabeled examples"):
        learn_merge("adamerging", base, experts, {"task0": TEXTS, "task1": [], "task2": TEXTS}, steps=1)
    with pytest.raises(MergeLabError, match="unknown learned merging method"):
        learn_merge("fisher", base, experts, {n: TEXTS for n in experts}, steps=1)
