"""The task-arithmetic family: task_arithmetic, magnitude_prune, ties, dare_linear, dare_ties, breadcrumbs,
breadcrumbs_ties, della, della_linear — one recipe (sparsify → weight → optional sign consensus → sum → normalize →
λ) with different pieces plugged in, exactly as mergekit 0.1.5's generalized task arithmetic."""

from __future__ import annotations

from collections.abc import Callable

import torch

from merging.methods import params as P
from merging.methods import sparsify
from merging.methods.common import as_float32, default_generator
from merging.methods.consensus import agreement_masks, disjoint_sum, elect_sign
from merging.methods.registry import DeltaFn, Method, MethodFn, Param, register

# A sparsifier takes (delta, this model's params, global params, generator) and returns a new tensor.
Sparsifier = Callable[[torch.Tensor, dict, dict, torch.Generator | None], torch.Tensor]


def _magnitude(delta: torch.Tensor, model: dict, shared: dict, generator: torch.Generator | None) -> torch.Tensor:
    return sparsify.magnitude(delta, model["density"], shared.get("rescale", False))


def _random(delta: torch.Tensor, model: dict, shared: dict, generator: torch.Generator | None) -> torch.Tensor:
    return sparsify.random(delta, model["density"], shared["rescale"], default_generator(generator))


def _breadcrumbs(delta: torch.Tensor, model: dict, shared: dict, generator: torch.Generator | None) -> torch.Tensor:
    return sparsify.breadcrumbs(delta, model["density"], model["gamma"], shared.get("rescale", False))


def _della(delta: torch.Tensor, model: dict, shared: dict, generator: torch.Generator | None) -> torch.Tensor:
    return sparsify.della(delta, model["density"], model["epsilon"], shared["rescale"], default_generator(generator))


def mix_deltas(
    deltas: list[torch.Tensor],
    model_params: list[dict],
    params: dict,
    generator: torch.Generator | None,
    *,
    sparsifier: Sparsifier | None,
    consensus: bool,
) -> torch.Tensor:
    """The mixed task vector λ·(Σ mask_i w_i δ_i) / divisor for already computed task vectors δ_i."""
    weights = [float(m["weight"]) for m in model_params]
    weighted = []
    for delta, model, weight in zip(deltas, model_params, weights):
        delta = as_float32(delta)
        delta = sparsifier(delta, model, params, generator) if sparsifier else delta.clone()
        weighted.append(delta.mul_(weight) if weight != 1 else delta)
    if consensus:
        masks = agreement_masks(weighted, elect_sign(weighted))
        mixed, divisor = disjoint_sum(weighted, weights, masks)
        divisor.masked_fill_(divisor == 0, 1.0)
    else:
        mixed = weighted[0]
        for delta in weighted[1:]:
            mixed.add_(delta)
        total = sum(weights)
        divisor = total if abs(total) >= 1e-8 else 1.0
    if params.get("normalize", False):
        mixed.div_(divisor)
    if params.get("lambda", 1.0) != 1:
        mixed.mul_(params["lambda"])
    return mixed


def _make_fns(sparsifier: Sparsifier | None, consensus: bool) -> tuple[MethodFn, DeltaFn]:
    def fn_deltas(deltas, model_params, params, generator):
        return mix_deltas(deltas, model_params, params, generator, sparsifier=sparsifier, consensus=consensus)

    def fn(base, tensors, model_params, params, generator):
        base = as_float32(base)
        deltas = [as_float32(t) - base for t in tensors]
        return fn_deltas(deltas, model_params, params, generator).add_(base)

    return fn, fn_deltas


def _family(
    name: str,
    *,
    explanation: str,
    formula: str,
    sparsifier: Sparsifier | None,
    consensus: bool,
    normalize: bool,
    rescale: bool | None,
    extra: tuple[Param, ...] = (),
    random: bool = False,
) -> Method:
    params: tuple[Param, ...] = (P.WEIGHT,)
    if sparsifier is not None:
        params += (P.DENSITY,)
    params += extra + (P.LAMBDA, P.normalize(normalize))
    if rescale is not None:
        params += (P.rescale(rescale),)
    params += (P.INT8_MASK,)
    fn, fn_deltas = _make_fns(sparsifier, consensus)
    return register(
        Method(
            name=name, family="task_arithmetic", explanation=explanation, formula=formula, params=params,
            base="required", random=random, min_models=1, max_models=None, fn=fn, fn_deltas=fn_deltas,
        )
    )


TIES_MEAN = "s = sign(Σ w_i δ_i); out = base + λ·Σ_i [sign δ_i = s]·w_i δ_i / Σ_i [sign δ_i = s]·w_i"

_family(
    "task_arithmetic",
    explanation="Add each model's weighted task vector (model − base) to the base.",
    formula="out = base + λ·Σ_i w_i (x_i − base)   (÷ Σ w_i if normalize)",
    sparsifier=None, consensus=False, normalize=False, rescale=None,
)
_family(
    "magnitude_prune",
    explanation="Task arithmetic after keeping only the largest-magnitude entries of each task vector.",
    formula="δ_i = top_k(|x_i − base|, density); out = base + λ·Σ_i w_i δ_i",
    sparsifier=_magnitude, consensus=False, normalize=False, rescale=False,
)
_family(
    "ties",
    explanation="Trim each task vector to its largest entries, elect a sign per entry, average the agreeing ones.",
    formula="δ_i = top_k(x_i − base, density); " + TIES_MEAN,
    sparsifier=_magnitude, consensus=True, normalize=True, rescale=False,
)
_family(
    "dare_linear",
    explanation="Randomly drop entries of each task vector (keep with p = density), rescale, add them up.",
    formula="δ_i = rescale(Bernoulli(density) ⊙ (x_i − base)); out = base + λ·Σ_i w_i δ_i",
    sparsifier=_random, consensus=False, normalize=False, rescale=True, random=True,
)
_family(
    "dare_ties",
    explanation="DARE random dropping, then TIES sign election and disjoint mean.",
    formula="δ_i = rescale(Bernoulli(density) ⊙ (x_i − base)); " + TIES_MEAN,
    sparsifier=_random, consensus=True, normalize=False, rescale=True, random=True,
)
_family(
    "breadcrumbs",
    explanation="Drop both the largest outliers (gamma) and the smallest entries of each task vector, then add.",
    formula="δ_i = keep ranks (1−density−γ, 1−γ] of |x_i − base|; out = base + λ·Σ_i w_i δ_i",
    sparsifier=_breadcrumbs, consensus=False, normalize=False, rescale=False, extra=(P.GAMMA,),
)
_family(
    "breadcrumbs_ties",
    explanation="Breadcrumbs pruning, then TIES sign election and disjoint mean.",
    formula="δ_i = keep ranks (1−density−γ, 1−γ] of |x_i − base|; " + TIES_MEAN,
    sparsifier=_breadcrumbs, consensus=True, normalize=False, rescale=False, extra=(P.GAMMA,),
)
_family(
    "della",
    explanation="Randomly drop entries with a probability that falls with magnitude rank, then TIES consensus.",
    formula="keep δ_ij with p = density − ε + 2ε·rank_j/(n−1) (per row), rescale; " + TIES_MEAN,
    sparsifier=_della, consensus=True, normalize=True, rescale=True, extra=(P.EPSILON,), random=True,
)
_family(
    "della_linear",
    explanation="DELLA's magnitude-ranked random dropping, then a plain weighted sum.",
    formula="keep δ_ij with p = density − ε + 2ε·rank_j/(n−1) (per row), rescale; out = base + λ·Σ_i w_i δ_i",
    sparsifier=_della, consensus=False, normalize=False, rescale=True, extra=(P.EPSILON,), random=True,
)
