"""The SAMerging paper's own settings as an option (`defaults="paper"`, `--defaults paper`): SGD with momentum 0.99
under ASAM, λ from 0, task vectors at unit norm; checked against hand-made optimiser steps, and end to end."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

from merging.errors import MergeLabError
from merging.learned.api import PAPER_STEPS, default_config
from merging.learned.trainer import OptimConfig, learn
from tests.test_learned_cli import write_prompts
from tests.test_learned_core import T, cheap_grad, toy_problem

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_paper_defaults_are_the_public_codes_settings():
    sam = default_config("samerging", "paper")
    assert (sam.optimizer, sam.momentum, sam.lr, sam.weight_decay) == ("sgd", 0.99, 1e-3, 5e-4)
    assert (sam.rho, sam.rho_relative, sam.adaptive, sam.asam_eta) == (0.07, None, True, 0.0)
    assert (sam.init, sam.init_grid, sam.normalize, sam.steps, sam.patience) == (0.0, (), True, PAPER_STEPS, 0)
    ada = default_config("adamerging", "paper")
    assert (ada.optimizer, ada.lr, ada.init, ada.normalize, ada.rho) == ("adam", 1e-3, 0.3, False, 0.0)
    ours = default_config("samerging")
    assert (ours.optimizer, ours.normalize, ours.init_grid != ()) == ("adam", False, True)
    assert default_config("samerging", "paper", steps=7).steps == 7  # an explicit option still wins
    with pytest.raises(MergeLabError, match="unknown defaults"):
        default_config("samerging", "papers")
    with pytest.raises(MergeLabError, match="momentum"):
        OptimConfig(optimizer="sgd", momentum=1.0).check()


def test_unit_norm_sgd_momentum_steps_by_hand():
    """Two plain SGD-momentum steps (ρ 0) on λ for τ/‖τ‖, computed by hand from the gradient of the raw
    coefficients: ∂L/∂λ = ∂L/∂c · 1/‖τ‖ with c = λ/‖τ‖; momentum buffer b2 = 0.99·b1 + g2."""
    problem = toy_problem(dtype=torch.float64)
    vectors = problem.vectors
    norms = torch.stack([vectors.blocks[n].norm(dim=1) for n in vectors.names], dim=1)
    total = lambda: sum(problem.kl(t, 0) for t in range(T))  # one batch, as the run below
    lr, mu = 0.05, 0.99
    lam = torch.full((T, vectors.num_tensors), 0.2, dtype=torch.float64)
    g1 = cheap_grad(vectors, problem.params, lam / norms, total) / norms
    lam1 = lam - lr * g1
    g2 = cheap_grad(vectors, problem.params, lam1 / norms, total) / norms
    lam2 = lam1 - lr * (mu * g1 + g2)
    config = OptimConfig(steps=2, lr=lr, optimizer="sgd", momentum=mu, init=0.2, normalize=True, rho=0.0)
    got = learn(vectors, problem.params, problem.kl, 1, config)
    torch.testing.assert_close(got.normalized_coefficients, lam2, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.coefficients, lam2 / norms, rtol=0, atol=1e-12)  # what the recipe writes
    merged = vectors.merged(got.coefficients)
    name = vectors.names[0]
    by_hand = vectors.base[name] + (lam2[:, 0] / norms[:, 0]) @ vectors.blocks[name]
    torch.testing.assert_close(merged[name].reshape(-1), by_hand, rtol=0, atol=1e-12)


def test_paper_sam_from_zero_takes_a_plain_step_first_then_perturbs():
    """ASAM without η scales ε by λ²: at λ = 0 the first step is plain SGD; once λ moves, SAM's second gradient
    (at λ+ε) makes the run differ from the same optimiser without SAM."""
    settings = {"steps": 1, "lr": 0.05, "optimizer": "sgd", "momentum": 0.99, "init": 0.0, "normalize": True,
                "asam_eta": 0.0}
    one_sam = learn(*_toy(), OptimConfig(rho=0.07, **settings))
    one_plain = learn(*_toy(), OptimConfig(rho=0.0, **settings))
    assert torch.equal(one_sam.coefficients, one_plain.coefficients)
    assert one_sam.eps_ratios == [0.0]
    settings["steps"] = 4
    four_sam = learn(*_toy(), OptimConfig(rho=0.07, **settings))
    four_plain = learn(*_toy(), OptimConfig(rho=0.0, **settings))
    assert not torch.equal(four_sam.coefficients, four_plain.coefficients)


def _toy():
    problem = toy_problem(dtype=torch.float64)
    return problem.vectors, problem.params, problem.kl, 2


def test_cli_learns_with_the_papers_settings(tmp_path):
    from merging.cli import main
    from merging.learned.recipe_io import load_coefficients
    from tests.factory import make_family

    family = make_family(tmp_path / "models", n_experts=2, scale=0.05)
    prompts = write_prompts(tmp_path / "prompts.jsonl", ["math", "strings"], 4)
    out = tmp_path / "recipe"
    argv = ["learn", "--defaults", "paper", "--base", str(family.base), "--expert", f"math={family.experts[0]}",
            "--expert", f"strings={family.experts[1]}", "--prompts", str(prompts), "--examples-per-task", "4",
            "--batch-size", "2", "--steps", "3", "--max-new-tokens", "4", "--quiet", "--out", str(out)]
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert main(argv) == 0
    info = json.loads((out / "learned.json").read_text())
    assert info["settings"]["defaults"] == "paper" and info["init"] == 0.0 and not info["init_losses"]
    assert info["heldout_examples"] == 0 and info["steps_run"] == 3  # no held-out inputs, no early stop
    assert "start λ = 0" in stdout.getvalue()
    _, _, lam = load_coefficients(out)
    assert lam.shape[0] == 2 and lam.abs().max() > 0  # λ left 0: the SGD steps moved it
