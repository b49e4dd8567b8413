"""Core of learned merging: the cheap coefficient gradient, SAM's two modes, and that learning lowers the loss."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.func import functional_call

from merging.errors import MergeCancelled, MergeLabError
from merging.learned.coefficients import TaskVectors
from merging.learned.objectives import entropy_loss, kl_loss, teacher_targets
from merging.learned.sam import sam_perturbation
from merging.learned.trainer import OptimConfig, learn

pytestmark = pytest.mark.usefixtures("one_torch_thread")


T = 3


class Toy(nn.Module):
    """A backbone (merged) and one head per task (never merged), with different class counts."""

    def __init__(self, classes=(2, 3, 4)):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(16, c) for c in classes)

    def forward(self, x, task):
        return self.heads[task](self.body(x))


@dataclass
class ToyProblem:
    student: Toy
    vectors: TaskVectors
    params: dict  # the student's leaf tensors for the merged names
    heads: dict
    xs: list
    teachers: list

    def kl(self, task, batch):
        return kl_loss(self.student(self.xs[task][batch], task), self.teachers[task][batch])

    def entropy(self, task, batch):
        return entropy_loss(self.student(self.xs[task][batch], task))

    def functional_kl(self, merged, batch=0):
        """Σ_t KL at given backbone tensors, through functional_call (for autograd references)."""
        return sum(
            kl_loss(functional_call(self.student, {**merged, **self.heads}, (self.xs[t][batch], t)),
                    self.teachers[t][batch])
            for t in range(T)
        )


def toy_problem(seed: int = 0, dtype=torch.float32, batches: int = 2) -> ToyProblem:
    """A base, T experts (base + random task vectors on the backbone), teachers' targets on random inputs."""
    torch.manual_seed(seed)
    student = Toy().to(dtype)
    base = {n: p.detach().clone() for n, p in student.body.named_parameters(prefix="body")}
    experts = [{n: w + 0.5 * torch.randn_like(w) for n, w in base.items()} for _ in range(T)]
    xs = [[torch.randn(16, 8, dtype=dtype) for _ in range(batches)] for _ in range(T)]
    heads = {n: p.detach() for n, p in student.named_parameters() if n.startswith("heads")}
    with torch.no_grad():
        teachers = [[teacher_targets(functional_call(student, {**experts[t], **heads}, (x, t))) for x in xs[t]]
                    for t in range(T)]
    params = dict(student.named_parameters())
    for n, p in params.items():
        p.requires_grad_(n in base)
    vectors = TaskVectors(base, experts, dtype=dtype)
    return ToyProblem(student, vectors, {n: params[n] for n in vectors.names}, heads, xs, teachers)


def test_shared_names_skip_heads_and_mismatched_shapes():
    base = {"a": torch.zeros(2), "b": torch.zeros(3), "only_base": torch.zeros(1)}
    experts = [{"a": torch.ones(2), "b": torch.ones(4)}, {"a": torch.ones(2), "b": torch.ones(3), "head": torch.ones(1)}]
    assert TaskVectors(base, experts).names == ["a"]


def test_materialize_is_base_plus_weighted_task_vectors():
    vectors = toy_problem().vectors
    lam = torch.randn(T, vectors.num_tensors)
    name = vectors.names[2]
    shape = vectors.shapes[name]
    expected = vectors.base[name].view(shape) + sum(lam[t, 2] * vectors.blocks[name][t].view(shape) for t in range(T))
    torch.testing.assert_close(vectors.merged(lam)[name], expected)
    task_wise = torch.tensor([0.1, 0.2, 0.3])
    assert torch.equal(vectors.merged(task_wise)[name],
                       vectors.merged(task_wise[:, None].expand(T, vectors.num_tensors).clone())[name])


def test_materialize_into_the_tensors_the_base_came_from_leaves_the_base_intact():
    params = {"w": torch.zeros(3)}
    vectors = TaskVectors(params, [{"w": torch.ones(3)}])  # the base *is* the parameter it will be written into
    vectors.materialize(torch.tensor([1.0]), params)
    vectors.materialize(torch.tensor([0.5]), params)
    assert torch.equal(params["w"], torch.full((3,), 0.5))


def autograd_through_merge(vectors: TaskVectors, lam: torch.Tensor, loss_of_merged) -> torch.Tensor:
    """Reference: ∂L(θ0 + Σ λ τ)/∂λ by autograd through the merge itself."""
    lam = lam.clone().requires_grad_(True)
    full = lam if lam.dim() == 2 else lam[:, None].expand(vectors.num_tasks, vectors.num_tensors)
    merged = {n: (vectors.base[n] + full[:, j] @ vectors.blocks[n]).view(vectors.shapes[n])
              for j, n in enumerate(vectors.names)}
    loss_of_merged(merged).backward()
    return lam.grad


def cheap_grad(vectors: TaskVectors, params: dict, lam: torch.Tensor, loss) -> torch.Tensor:
    vectors.materialize(lam, params)
    for p in params.values():
        p.grad = None
    loss().backward()
    return vectors.coefficient_grad({n: p.grad for n, p in params.items()}, "layer" if lam.dim() == 2 else "task")


@pytest.mark.parametrize("granularity", ["layer", "task"])
def test_cheap_gradient_equals_autograd_through_the_merge(granularity):
    problem = toy_problem(dtype=torch.float64)
    shape = (T, problem.vectors.num_tensors) if granularity == "layer" else (T,)
    lam = torch.rand(shape, dtype=torch.float64)
    cheap = cheap_grad(problem.vectors, problem.params, lam, lambda: sum(problem.kl(t, 0) for t in range(T)))
    reference = autograd_through_merge(problem.vectors, lam, problem.functional_kl)
    assert cheap.shape == lam.shape and reference.abs().max() > 1e-3
    torch.testing.assert_close(cheap, reference, rtol=1e-5, atol=1e-10)


def test_cheap_gradient_equals_autograd_on_a_tiny_mistral():
    from transformers import MistralForCausalLM

    from tests.factory import tiny_config

    torch.manual_seed(0)
    model = MistralForCausalLM(tiny_config("mistral", layers=2)).double().eval()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    experts = [{n: w + 0.02 * torch.randn_like(w) for n, w in base.items()} for _ in range(2)]
    vectors = TaskVectors(base, experts, dtype=torch.float64)
    ids = torch.randint(4, 90, (2, 10))
    with torch.no_grad():
        target = teacher_targets(functional_call(model, experts[0], (ids,)).logits.reshape(-1, 96), top_k=20)
    params = dict(model.named_parameters())

    def loss_of(merged):
        return kl_loss(functional_call(model, merged, (ids,)).logits.reshape(-1, 96), target)

    lam = torch.rand(2, vectors.num_tensors, dtype=torch.float64)
    cheap = cheap_grad(vectors, params, lam, lambda: kl_loss(model(ids).logits.reshape(-1, 96), target))
    reference = autograd_through_merge(vectors, lam, loss_of)
    assert vectors.num_tensors == len(params)
    torch.testing.assert_close(cheap, reference, rtol=1e-5, atol=1e-12)


def run(problem: ToyProblem, config: OptimConfig, loss: str = "kl", **kwargs):
    fn = problem.kl if loss == "kl" else problem.entropy
    return learn(problem.vectors, problem.params, fn, num_batches=2, config=config, **kwargs)


def test_repo_mode_is_bit_identical_to_plain_adam_and_true_mode_is_not():
    settings = {"steps": 12, "lr": 0.05, "weight_decay": 5e-4, "init": 0.3}
    adam = run(toy_problem(), OptimConfig(rho=0.0, **settings)).coefficients
    repo = run(toy_problem(), OptimConfig(rho=0.07, sam_mode="repo", **settings)).coefficients
    true = run(toy_problem(), OptimConfig(rho=0.07, sam_mode="true", **settings)).coefficients
    assert torch.equal(repo, adam)
    assert not torch.equal(true, adam)
    assert (true - adam).abs().max() > 1e-4


def test_true_sam_takes_the_second_gradient_at_the_perturbed_point():
    problem = toy_problem(dtype=torch.float64)
    lam0 = torch.full((T, problem.vectors.num_tensors), 0.3, dtype=torch.float64)
    total = lambda: sum(problem.kl(t, 0) for t in range(T))
    g = cheap_grad(problem.vectors, problem.params, lam0, total)
    eps = sam_perturbation(lam0, g, 0.07)
    expected_grad = cheap_grad(problem.vectors, problem.params, lam0 + eps, total)
    expected = torch.optim.Adam([lam0.clone().requires_grad_(True)], lr=0.01)
    param = expected.param_groups[0]["params"][0]
    param.grad = expected_grad
    expected.step()
    got = learn(problem.vectors, problem.params, problem.kl, 1, OptimConfig(steps=1, lr=0.01, rho=0.07, init=0.3))
    torch.testing.assert_close(got.coefficients, param.detach(), rtol=0, atol=1e-12)


def test_sam_perturbation_has_radius_rho():
    lam, g = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([1.0, 2.0, -3.0])
    assert sam_perturbation(lam, g, 0.1, adaptive=False).norm().item() == pytest.approx(0.1)
    adaptive = sam_perturbation(lam, g, 0.1, eta=0.0)
    assert (adaptive / lam.abs()).norm().item() == pytest.approx(0.1)  # radius measured relative to |λ|
    assert torch.equal(sam_perturbation(lam, torch.zeros(3), 0.1), torch.zeros(3))


@pytest.mark.parametrize("loss,rho,ratio", [("kl", 0.07, 0.8), ("entropy", 0.0, 0.9)])
def test_learning_lowers_the_loss(loss, rho, ratio):
    result = run(toy_problem(), OptimConfig(steps=40, lr=0.05, rho=rho, init=0.0), loss=loss)
    first, last = sum(result.losses[:2]), sum(result.losses[-2:])
    assert last < ratio * first


def test_progress_and_cancel():
    seen = []
    run(toy_problem(), OptimConfig(steps=3), progress=lambda step, loss: seen.append((step, loss)))
    assert [s for s, _ in seen] == [1, 2, 3] and all(loss > 0 for _, loss in seen)
    done = []
    with pytest.raises(MergeCancelled, match="after 2 of 5"):
        run(toy_problem(), OptimConfig(steps=5), progress=lambda s, _: done.append(s), cancel=lambda: len(done) >= 2)


def test_bad_settings_say_what_to_fix():
    with pytest.raises(MergeLabError, match="rho"):
        run(toy_problem(), OptimConfig(rho=-1))
    with pytest.raises(MergeLabError, match="sam_mode"):
        run(toy_problem(), OptimConfig(sam_mode="fake"))
