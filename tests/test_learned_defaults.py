"""Learned merging's defaults: a start searched by the loss, early stopping on held-out inputs that learning never
sees, a SAM radius relative to ‖λ‖, and convergence within the default steps on the shipped classifier zoo."""

from __future__ import annotations

import json

import pytest
import torch

from merging.errors import MergeLabError
from merging.learned import api
from merging.learned.adapters import setup_classifier
from merging.learned.api import DEFAULT_RHO_RELATIVE, default_config, learn_merge, split_heldout
from merging.learned.trainer import OptimConfig, learn, relative_rho
from tests.test_learned_core import toy_problem

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_split_heldout_is_disjoint_and_keeps_one_example_tasks_whole():
    inputs = {"a": [f"a{i}" for i in range(16)], "b": ["b0", "b1", "b1", "b2"], "c": ["only"]}
    train, heldout = split_heldout(inputs, 0.25)
    for task, items in inputs.items():
        assert not set(train[task]) & set(heldout[task])
        assert set(train[task]) | set(heldout[task]) == set(items)
    assert len(heldout["a"]) == 4 and len(train["a"]) == 12
    assert heldout["b"] == ["b2"]  # the duplicate b1 counts once and stays on the training side
    assert train["c"] == ["only"] and heldout["c"] == []
    assert split_heldout(inputs, 0.0)[1] == {"a": [], "b": [], "c": []}
    with pytest.raises(MergeLabError, match="held-out fraction"):
        split_heldout(inputs, 1.0)


def test_held_out_loss_never_changes_an_update():
    """Two different held-out losses: the training trajectory is the same step for step; only the λ returned (the
    best by the held-out loss) and the stopping point depend on it."""
    config = OptimConfig(steps=12, lr=0.05, init=0.3, eval_every=2, patience=0)
    runs = []
    for val in (lambda t, b: torch.tensor(1.0), None):
        problem = toy_problem()
        val_fn = val if val is not None else problem.entropy
        runs.append(learn(problem.vectors, problem.params, problem.kl, 2, config, val_loss_fn=val_fn,
                          num_val_batches=1))
    constant, entropy = runs
    assert constant.losses == entropy.losses
    # A constant held-out loss never improves after step 0, so the start is kept.
    assert constant.best_step == 0 and torch.allclose(constant.coefficients, torch.full_like(constant.coefficients, 0.3))
    assert [s for s, _ in entropy.val_losses] == [0, 2, 4, 6, 8, 10, 12]
    best = min(entropy.val_losses, key=lambda sv: sv[1])
    assert entropy.best_step == best[0]


def test_early_stopping_stops_after_patience_evaluations():
    problem = toy_problem()
    worse = iter(range(1000))
    result = learn(problem.vectors, problem.params, problem.kl, 2,
                   OptimConfig(steps=100, lr=0.05, eval_every=3, patience=2),
                   val_loss_fn=lambda t, b: torch.tensor(float(next(worse))), num_val_batches=1)
    assert result.stopped_early and len(result.losses) == 6 and result.best_step == 0


def test_start_is_the_best_constant_by_the_training_loss():
    problem = toy_problem()
    grid = (0.0, 0.3, 0.6, 1.0)
    result = learn(problem.vectors, problem.params, problem.kl, 2, OptimConfig(steps=1, init_grid=grid))
    assert set(result.init_losses) == set(grid)
    assert result.init == min(result.init_losses, key=result.init_losses.get)
    # each recorded loss is the training loss at that constant λ, averaged over the batches
    again = toy_problem()
    again.vectors.materialize(again.vectors.init_coefficients(0.6), again.params)
    with torch.no_grad():
        expected = sum(float(again.kl(t, b)) for t in range(3) for b in range(2)) / 2
    assert result.init_losses[0.6] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("adaptive", [True, False])
def test_relative_rho_gives_the_asked_share_of_lambda(adaptive):
    problem = toy_problem()
    result = learn(problem.vectors, problem.params, problem.kl, 2,
                   OptimConfig(steps=5, lr=0.01, init=0.4, rho=0.07, rho_relative=0.05, adaptive=adaptive))
    assert result.rho == pytest.approx(relative_rho(torch.full((3, problem.vectors.num_tensors), 0.4), 0.05,
                                                    adaptive=adaptive, eta=0.01))
    assert len(result.eps_ratios) == 5
    assert 0.02 < result.eps_ratio < 0.08  # ~5 % (exactly 5 % for standard SAM at the first step)
    if not adaptive:
        assert result.eps_ratios[0] == pytest.approx(0.05, rel=1e-4)


def test_defaults_are_the_documented_ones():
    sam, ada = default_config("samerging"), default_config("adamerging")
    assert sam.lr == ada.lr == 1e-2 and sam.init_grid == ada.init_grid and len(sam.init_grid) >= 3
    assert sam.rho_relative == DEFAULT_RHO_RELATIVE and ada.rho == 0
    assert sam.patience > 0 and sam.steps >= 100


def test_learn_merge_never_trains_on_held_out_inputs(classifiers, monkeypatch):
    """learn_merge hands the setup disjoint training and held-out inputs, and the setup batches them apart."""
    rows = [json.loads(line) for line in classifiers.unlabeled.read_text(encoding="utf-8").splitlines()]
    inputs = {e: [r["text"] for r in rows if r["expert"] == e][:8] for e in classifiers.experts}
    seen = {}

    def spy(base, experts, texts, **kwargs):
        seen["train"], seen["heldout"] = texts, kwargs["heldout"]
        return setup_classifier(base, experts, texts, **kwargs)

    monkeypatch.setattr(api, "setup_classifier", spy)
    merge = learn_merge("samerging", classifiers.base, classifiers.experts, inputs, steps=2, batch_size=8)
    for task in classifiers.experts:
        assert not set(seen["train"][task]) & set(seen["heldout"][task])
        assert len(seen["train"][task]) == 6 and len(seen["heldout"][task]) == 2
    assert merge.heldout == seen["heldout"]
    setup = merge.setup
    assert setup.num_batches == 1 and setup.num_heldout_batches == 1
    assert setup.student_logits(0, 0).shape[0] == 6 and setup.student_logits(0, 0, "heldout").shape[0] == 2


def test_defaults_converge_on_the_lm_zoo():
    """SAMerging at its defaults on the shipped LM zoo (8 prompts per task: 6 learned on, 2 held out) falls far below
    the loss of its best constant start, on the held-out prompts too, well within the default steps (80 of 200
    here, to keep the test short), with ‖ε‖ a few % of ‖λ‖. Measured on the composing LM zoo (2026-12-06, whose
    replies restate the prompt): train loss 0.31 of its start by step 60, 0.24 by step 80; held-out 0.48; ‖ε‖/‖λ‖
    0.06. (On the earlier zoo: train 0.265 → 0.03, held-out 0.18 → 0.07 by step 30.)"""
    import zoo

    family = zoo.tiny_families()["lm"]
    rows = [json.loads(line) for line in family.unlabeled.read_text(encoding="utf-8").splitlines()]
    inputs = {e: [r["prompt"] for r in rows if r["expert"] == e][:8] for e in family.experts}
    steps = 80
    assert steps < default_config("samerging").steps
    merge = learn_merge("samerging", family.base, family.experts, inputs, steps=steps)
    r = merge.result
    assert r.init in default_config("samerging").init_grid and 0 < r.init < 1
    assert min(r.losses) < 0.3 * r.init_losses[r.init]
    start_heldout, best_heldout = r.val_losses[0][1], min(v for _, v in r.val_losses)
    assert best_heldout < 0.6 * start_heldout
    assert 0.02 < r.eps_ratio < 0.12


def test_learn_tab_names_an_uploaded_file_by_its_own_name(tmp_path):
    """Gradio hands the handler a server-side copy (/tmp/gradio/<hash>/NAME): the message names NAME only."""
    from merging.errors import TaskSetError
    from ui.learn_panel import unlabeled_inputs
    from ui.session import Session

    upload = tmp_path / "gradio" / "0123abcd" / "my prompts.jsonl"
    upload.parent.mkdir(parents=True)
    upload.write_text('{"expert": "math", "prompt": "1+1="}\n{"expert": "math"\n', encoding="utf-8")
    session = Session()
    session.sources = []
    with pytest.raises(TaskSetError) as error:
        unlabeled_inputs(session, str(upload), 1)
    assert "my prompts.jsonl:2" in str(error.value)
    assert str(upload.parent) not in str(error.value) and "0123abcd" not in str(error.value)
    upload.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(TaskSetError, match="my prompts.jsonl is not UTF-8"):
        unlabeled_inputs(session, str(upload), 1)
