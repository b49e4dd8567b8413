"""evaluation.interference: pure tensor functions on hand-made vectors, and the per-layer/module aggregation."""

from __future__ import annotations

import pytest
import torch

from evaluation.interference import (
    cosine_matrix,
    interference_report,
    jaccard_matrix,
    kept_share,
    layer_index,
    module_type,
    sign_conflict_rate,
    sign_conflicts,
    trim_mask,
)
from merging.errors import MergeLabError


def test_cosine_matrix_on_known_vectors():
    a, b, c = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]), torch.tensor([-3.0, 0.0])
    matrix = cosine_matrix([a, b, c, torch.zeros(2)])
    assert matrix[0, 0] == pytest.approx(1.0)
    assert matrix[0, 1] == pytest.approx(0.0)
    assert matrix[0, 2] == pytest.approx(-1.0)
    assert matrix[3, 0] == 0.0  # a zero vector has no direction


def test_sign_conflicts_count_only_entries_nonzero_in_two_vectors():
    a = torch.tensor([1.0, 1.0, 0.0, -1.0, 2.0])
    b = torch.tensor([-1.0, 1.0, 5.0, 0.0, 0.0])
    c = torch.tensor([0.0, -2.0, 0.0, -1.0, 0.0])
    # entry 0: + - (conflict); 1: + + - (conflict); 2: one vector only; 3: - - (agree); 4: one vector only
    assert sign_conflicts([a, b, c]) == (2, 3)
    assert sign_conflict_rate([a, b, c]) == pytest.approx(2 / 3)
    assert sign_conflict_rate([a, torch.zeros(5)]) is None


def test_trim_keeps_the_largest_magnitudes_as_ties_does():
    v = torch.tensor([0.1, -5.0, 0.3, 4.0, 0.0, -0.2, 0.0, 1.0])
    mask = trim_mask(v, 0.25)  # k = 2 of 8
    assert mask.tolist() == [False, True, False, True, False, False, False, False]
    assert trim_mask(v, 1.0).sum() == 6  # zeros are never "kept"
    mass, count = kept_share(v, 0.25)
    assert mass == pytest.approx(9.0 / 10.6)
    assert count == pytest.approx(2 / 6)
    with pytest.raises(MergeLabError, match="density"):
        trim_mask(v, 1.5)


def test_jaccard_of_kept_entries():
    a = torch.tensor([True, True, False, False])
    b = torch.tensor([False, True, True, False])
    matrix = jaccard_matrix([a, b, torch.zeros(4, dtype=torch.bool)])
    assert matrix[0, 1] == pytest.approx(1 / 3)
    assert matrix[0, 2] == 0.0 and matrix[2, 2] == 1.0


@pytest.mark.parametrize(
    ("name", "module", "layer"),
    [
        ("model.layers.3.self_attn.q_proj.weight", "q_proj", 3),
        ("model.layers.0.self_attn.k_proj.weight", "k_proj", 0),
        ("model.layers.1.self_attn.v_proj.weight", "v_proj", 1),
        ("model.layers.1.self_attn.o_proj.weight", "o_proj", 1),
        ("model.layers.2.mlp.down_proj.weight", "mlp", 2),
        ("model.layers.2.input_layernorm.weight", "norm", 2),
        ("model.embed_tokens.weight", "embed", None),
        ("model.norm.weight", "norm", None),
        ("lm_head.weight", "head", None),
        ("bert.encoder.layer.1.attention.self.query.weight", "q_proj", 1),
        ("bert.encoder.layer.1.attention.output.dense.weight", "o_proj", 1),
        ("bert.encoder.layer.1.attention.output.LayerNorm.weight", "norm", 1),
        ("bert.encoder.layer.0.intermediate.dense.weight", "mlp", 0),
        ("bert.encoder.layer.0.output.dense.weight", "mlp", 0),
        ("bert.embeddings.word_embeddings.weight", "embed", None),
        ("transformer.h.4.attn.c_proj.weight", "o_proj", 4),
    ],
)
def test_module_types_and_layers(name, module, layer):
    assert module_type(name) == module
    assert layer_index(name) == layer


def _state(**tensors):
    return {k.replace("__", "."): v for k, v in tensors.items()}


def test_report_aggregates_by_layer_and_module_from_summed_counts():
    base = _state(
        model__layers__0__self_attn__q_proj__weight=torch.zeros(2, 2),
        model__layers__1__mlp__up_proj__weight=torch.zeros(4),
        model__embed_tokens__weight=torch.zeros(3),
        position_ids=torch.arange(3),  # integer buffers are not task vectors
    )
    math = _state(
        model__layers__0__self_attn__q_proj__weight=torch.tensor([[1.0, -1.0], [0.0, 2.0]]),
        model__layers__1__mlp__up_proj__weight=torch.tensor([1.0, 1.0, 1.0, 1.0]),
        model__embed_tokens__weight=torch.tensor([1.0, 0.0, 0.0]),
        position_ids=torch.arange(3),
    )
    japanese = _state(
        model__layers__0__self_attn__q_proj__weight=torch.tensor([[1.0, 1.0], [0.0, -2.0]]),
        model__layers__1__mlp__up_proj__weight=torch.tensor([1.0, 1.0, -1.0, -1.0]),
        model__embed_tokens__weight=torch.tensor([0.0, 1.0, 0.0]),
        position_ids=torch.arange(3),
        classifier__weight=torch.ones(2),  # only in one expert: a head, left out
    )
    report = interference_report(base, {"math": math, "japanese": japanese}, density=0.5)
    assert report.tasks == ["math", "japanese"]
    assert report.layers == ["0", "1", "none"] and report.modules == ["embed", "q_proj", "mlp"]
    q = report.by_module["q_proj"]
    assert q["sign_conflict_rate"] == pytest.approx(2 / 3)  # entries (0,1) and (1,1) conflict; (0,0) agrees
    assert q["cosine"][0][1] == pytest.approx((1 - 1 - 4) / 6)
    mlp = report.by_layer["1"]
    assert mlp["sign_conflict_rate"] == pytest.approx(0.5)
    assert mlp["cosine"][0][1] == pytest.approx(0.0)
    overall = report.overall
    # conflicts summed over tensors (2 + 2 + 0) over eligible entries (3 + 4 + 0), not a mean of rates
    assert overall["sign_conflict_rate"] == pytest.approx(4 / 7)
    assert report.by_layer["none"]["cosine"][0][1] == pytest.approx(0.0)
    assert overall["kept_count_share"]["math"] == pytest.approx((2 + 2 + 1) / (3 + 4 + 1))
    assert {c["layer"] for c in report.cells} == {"0", "1", "none"}
    assert {t["name"] for t in report.tensors} == {
        "model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.up_proj.weight", "model.embed_tokens.weight"}
    assert set(report.to_dict()) >= {"tasks", "density", "overall", "by_layer", "by_module", "cells"}


def test_report_needs_two_experts():
    with pytest.raises(MergeLabError, match="two experts"):
        interference_report({"w": torch.zeros(2)}, {"only": {"w": torch.ones(2)}})


def test_the_random_reference_is_what_unrelated_vectors_measure():
    from evaluation.interference import random_conflict_rate

    generator = torch.Generator().manual_seed(0)
    for tasks in (2, 3):
        vectors = [torch.randn(50_000, generator=generator) for _ in range(tasks)]
        assert sign_conflict_rate(vectors) == pytest.approx(random_conflict_rate(tasks), abs=0.01)
    with pytest.raises(MergeLabError):
        random_conflict_rate(1)


def test_the_worked_example_is_what_the_ties_method_merges():
    """The lesson's table: each entry's trim, elected sign and merged value equal the registered TIES method's
    output at those entries (weights 1, λ 1), and conflicting entries come first."""
    from evaluation.interference import worked_example
    from merging.methods import get_method

    generator = torch.Generator().manual_seed(1)
    name = "model.layers.0.self_attn.q_proj.weight"
    base = {name: torch.randn(6, 5, generator=generator)}
    experts = {t: {name: base[name] + torch.randn(6, 5, generator=generator)} for t in ("math", "japanese")}
    example = worked_example(base, experts, name, density=0.5, entries=6)
    merged = get_method("ties").fn(base[name], [experts[t][name] for t in ("math", "japanese")],
                                   [{"weight": 1.0, "density": 0.5}] * 2, {"normalize": True, "lambda": 1.0}, None)
    delta = (merged - base[name]).reshape(-1)
    assert len(example.rows) == 6 and example.rows[0]["conflict"]
    for row in example.rows:
        assert row["merged"] == pytest.approx(float(delta[row["index"]]), abs=1e-5), row
        values = row["values"]
        assert row["conflict"] == (values["math"] * values["japanese"] < 0)


def test_election_wins_count_what_the_worked_example_shows_entry_by_entry():
    """Per task, the contested entries (kept by trimming in both, opposite signs) whose sign TIES elects: the
    report's count equals a count over the worked example's every entry."""
    from evaluation.interference import worked_example

    generator = torch.Generator().manual_seed(2)
    name = "model.layers.0.mlp.up_proj.weight"
    base = {name: torch.randn(8, 6, generator=generator)}
    experts = {t: {name: base[name] + torch.randn(8, 6, generator=generator)} for t in ("a", "b")}
    report = interference_report(base, experts, density=0.6)
    rows = worked_example(base, experts, name, density=0.6, entries=48).rows
    contested = [r for r in rows if r["conflict"] and all(r["kept"].values())]
    assert report.overall["contested"] == len(contested) > 0
    for task in ("a", "b"):
        won = sum(1 for r in contested if (r["values"][task] > 0) == (r["elected"] > 0))
        assert report.overall["election_wins"][task] == pytest.approx(won / len(contested))
