"""The task-arithmetic family: task_arithmetic, magnitude_prune, ties, dare_linear, dare_ties, breadcrumbs,
breadcrumbs_ties, della, della_linear — one recipe (sparsify → weight → optional sign consensus → sum → normalize →
λ) with different pieces plugged in, exactly as mergekit 0.1.5's generalized task arithmetic."""

from __future__ import annotations

from collections.abc import Callable

import torch

from merging.methods import params as P
from merging.methods import sparsify
from merging.methods.chunks import full_buffer
from merging.methods.common import Workspace, as_float32, default_generator
from merging.methods.consensus import consensus_merge_, weight_sum_divisor
from merging.methods.fused import can_fuse, fused_merge
from merging.methods.registry import SAME_IN_MERGEKIT, Mergekit, Method, MethodFn, Param, register

# A sparsifier prunes (delta, this model's params, global params, generator, workspace) in place.
Sparsifier = Callable[[torch.Tensor, dict, dict, torch.Generator | None, Workspace], torch.Tensor]


def _magnitude(delta, model, shared, generator, ws):
    return sparsify.magnitude_(delta, model["density"], shared.get("rescale", False), ws)


def _random(delta, model, shared, generator, ws):
    return sparsify.random_(delta, model["density"], shared["rescale"], generator, ws)


def _breadcrumbs(delta, model, shared, generator, ws):
    return sparsify.breadcrumbs_(delta, model["density"], model["gamma"], shared.get("rescale", False), ws)


def _della(delta, model, shared, generator, ws):
    return sparsify.della_(delta, model["density"], model["epsilon"], shared["rescale"], generator, ws)


def delta_of(tensor: torch.Tensor, base32: torch.Tensor, role: str | None = None) -> torch.Tensor:
    """tensor − base in the compute dtype, in one new buffer (widening a bf16 tensor first would allocate twice);
    with a `role`, in a reused scratch buffer (chunks.full_buffer) that the caller must not return."""
    if role is None and (tensor.dtype == base32.dtype or tensor.dtype not in (torch.bfloat16, torch.float16)):
        return torch.sub(as_float32(tensor), base32)
    out = torch.empty(tensor.shape, dtype=base32.dtype, device=tensor.device) if role is None \
        else full_buffer(role, tensor.shape, base32.dtype, tensor.device)
    return out.copy_(tensor).sub_(base32)


def widened(base: torch.Tensor) -> torch.Tensor:
    """The base in the compute dtype: itself, or a widened copy in a reused scratch buffer."""
    if base.dtype in (torch.float32, torch.float64):
        return base
    return full_buffer("base32", base.shape, torch.float32, base.device).copy_(base)


class ScratchWorkspace(Workspace):
    """A Workspace whose buffers come from chunks.full_buffer (reused across calls inside compute_threads())."""

    def get(self, role: str, dtype: torch.dtype) -> torch.Tensor:
        return full_buffer(f"workspace-{role}-{dtype}", self.shape, dtype, self.device)


def mix_deltas_(
    deltas: list[torch.Tensor],
    model_params: list[dict],
    params: dict,
    generator: torch.Generator | None,
    *,
    sparsifier: Sparsifier | None,
    consensus: bool,
    base: torch.Tensor | None = None,
) -> torch.Tensor:
    """λ·(Σ_i mask_i w_i δ_i) / divisor from float32 task vectors the caller owns (they are overwritten), plus
    `base` when given (then the merged tensor is returned)."""
    weights = [float(m["weight"]) for m in model_params]
    if sparsifier is not None:  # a generator and scratch only where something is pruned
        generator = default_generator(generator)  # one stream for all models, so their masks differ
        ws = ScratchWorkspace(deltas[0])
        for delta, model in zip(deltas, model_params):
            sparsifier(delta, model, params, generator, ws)
        del ws  # free the full-size scratch: the combine step needs only chunk-sized buffers
    for delta, weight in zip(deltas, weights):
        if weight != 1:
            delta.mul_(weight)
    normalize = bool(params.get("normalize", False))
    scale = float(params.get("lambda", 1.0))
    if consensus:
        return consensus_merge_(deltas, weights, normalize=normalize, scale=scale, base=base)
    mixed = deltas[0]
    for delta in deltas[1:]:
        mixed.add_(delta)
    total = sum(weights)
    if normalize:
        scale /= weight_sum_divisor(total)
    if scale != 1:
        mixed.mul_(scale)
    return mixed.add_(base) if base is not None else mixed


def _make_fn(sparsifier: Sparsifier | None, consensus: bool) -> MethodFn:
    fusable = sparsifier is None or sparsifier is _magnitude

    def fn(base, tensors, model_params, params, generator):
        if fusable and can_fuse(base, tensors) and params.get("rescale", False) is False:
            densities = [float(m["density"]) for m in model_params] if sparsifier is not None else None
            return fused_merge(
                base, tensors, [float(m["weight"]) for m in model_params], densities=densities, consensus=consensus,
                normalize=bool(params.get("normalize", False)), scale=float(params.get("lambda", 1.0)),
            )
        base = widened(base)
        # the first task vector becomes the result; the others are scratch
        deltas = [delta_of(t, base, None if i == 0 else f"delta{i}") for i, t in enumerate(tensors)]
        return mix_deltas_(deltas, model_params, params, generator, sparsifier=sparsifier, consensus=consensus,
                           base=base)

    return fn


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
    mergekit: Mergekit = SAME_IN_MERGEKIT,
) -> Method:
    params: tuple[Param, ...] = (P.WEIGHT,)
    if sparsifier is not None:
        params += (P.DENSITY,)
    params += extra + (P.LAMBDA, P.normalize(normalize))
    if rescale is not None:
        params += (P.rescale(rescale),)
    params += (P.INT8_MASK,)
    return register(
        Method(
            name=name, family="task_arithmetic", explanation=explanation, formula=formula, params=params,
            base="required", random=random, min_models=1, max_models=None, fn=_make_fn(sparsifier, consensus),
            mergekit=mergekit,
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
    # the same pruning (keep the top int(density·n) entries): tests/test_mergekit_parity.py runs it in mergekit
    mergekit=Mergekit(name="breadcrumbs", parameters=(("gamma", 0.0),),
                      note="magnitude_prune is written as breadcrumbs with gamma 0 (the same pruning)"),
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
