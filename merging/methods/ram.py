"""Reinforced Agent Merging (mergekit 0.1.5's `ram` and `ramplus_tl`, arXiv:2601.13572).

An entry only one model changed keeps that model's change whole (averaging would dilute it by the model count);
an entry several models changed gets the mean of their changes. A change counts when |x_i − base| > epsilon.
RAM+ (tensor-local) also scales up each model's unique entries by how much of its change the others share in the
same tensor: λ_i = 1 + r·min(ρ_i, α), ρ_i = (its shared changed entries) / (its unique changed entries).
"""

from __future__ import annotations

import torch

from merging.methods.common import as_float32
from merging.methods.params import MAGNITUDE
from merging.methods.registry import SAME_IN_MERGEKIT, Method, Param, register

CHANGE_THRESHOLD = Param(
    name="epsilon", scope="global", default=1e-5, low=1e-12, high=1.0, kind="float",
    help="A change of at most this size counts as no change (RAM+ also divides by it when a model has no unique "
    "entries).", role="tolerance",
)
R = Param(name="r", scope="global", default=0.1, low=-MAGNITUDE, high=MAGNITUDE, kind="float",
          help="How strongly the shared/unique ratio boosts each model's unique entries.", ui_range=(0.0, 1.0))
ALPHA = Param(name="alpha", scope="global", default=0.2, low=0.0, high=MAGNITUDE, kind="float",
              help="Cap on the shared/unique ratio before it boosts (boost at most 1 + r·α).", ui_range=(0.0, 1.0))


def changed_task_vectors(base32: torch.Tensor, tensors: list[torch.Tensor], epsilon: float,
                         ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(each task vector with its unchanged entries zeroed, how many models changed each entry). A kept entry is
    nonzero (|δ| > ε ≥ 1e-12), so `delta != 0` is its model's changed-entry mask: no masks are kept beside."""
    deltas = []
    count = torch.zeros(base32.shape, dtype=torch.int32, device=base32.device)
    for tensor in tensors:
        delta = as_float32(tensor) - base32
        changed = delta.abs() > epsilon
        deltas.append(delta.masked_fill_(~changed, 0.0))
        count += changed
    return deltas, count


def disjoint_merge(base32: torch.Tensor, deltas: list[torch.Tensor], count: torch.Tensor,
                   boosts: list[float] | None = None) -> torch.Tensor:
    """base + per entry: boost_i·δ_i where model i alone changed it (boost 1 without `boosts`), the mean of the
    changes where several did."""
    total = torch.zeros_like(base32)
    for delta in deltas:
        total += delta
    shared = count > 1
    mean = total.div_(count.clamp(min=1))  # a lone change divided by 1: itself
    if boosts is None:
        return base32 + mean
    boosted = torch.zeros_like(base32)
    for delta, boost in zip(deltas, boosts):
        boosted.add_(delta, alpha=boost)
    return base32 + torch.where(shared, mean, boosted)


def ram(base, tensors, model_params, params, generator) -> torch.Tensor:
    base32 = as_float32(base)
    deltas, count = changed_task_vectors(base32, tensors, float(params["epsilon"]))
    return disjoint_merge(base32, deltas, count)


def unique_boosts(deltas: list[torch.Tensor], count: torch.Tensor, epsilon: float, r: float,
                  alpha: float) -> list[float]:
    """RAM+'s λ_i = 1 + r·clamp(ρ_i, 0, α), ρ_i = shared_i / max(unique_i, ε) counted over this tensor."""
    shared = count > 1
    boosts = []
    for delta in deltas:
        changed = delta != 0
        changed_total = int(changed.sum())
        shared_count = int((changed & shared).sum())
        ratio = shared_count / max(changed_total - shared_count, epsilon)
        boosts.append(1.0 + r * min(max(ratio, 0.0), alpha))
    return boosts


def ramplus_tl(base, tensors, model_params, params, generator) -> torch.Tensor:
    base32 = as_float32(base)
    epsilon = float(params["epsilon"])
    deltas, count = changed_task_vectors(base32, tensors, epsilon)
    boosts = unique_boosts(deltas, count, epsilon, float(params["r"]), float(params["alpha"]))
    return disjoint_merge(base32, deltas, count, boosts)


register(Method(
    name="ram", family="ram",
    explanation="Keep a change only one model made whole; average the changes where several models changed an "
    "entry.",
    formula="δ_i = x_i − base where |x_i − base| > ε, else 0; n = #{i: δ_i ≠ 0}; out = base + Σ_i δ_i / max(n, 1)",
    params=(CHANGE_THRESHOLD,), base="required", random=False, min_models=1, max_models=None, fn=ram,
    mergekit=SAME_IN_MERGEKIT,
))
register(Method(
    name="ramplus_tl", family="ram",
    explanation="RAM, with each model's unique changes scaled up by how much of its change the others share in "
    "this tensor.",
    formula="λ_i = 1 + r·min(shared_i / unique_i, α); out = base + (n = 1: λ_i·δ_i; n > 1: Σ_i δ_i / n)",
    params=(CHANGE_THRESHOLD, R, ALPHA), base="required", random=False, min_models=1, max_models=None, fn=ramplus_tl,
    mergekit=SAME_IN_MERGEKIT,
))
