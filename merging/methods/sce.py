"""SCE (Select, Calculate, Erase), mergekit 0.1.5 semantics: one variance-based selection mask for all task vectors,
per-model coefficients from the task vectors' energy, TIES sign election, coefficient-weighted disjoint mean."""

from __future__ import annotations

import torch

from merging.methods.common import Workspace
from merging.methods.consensus import consensus_merge_
from merging.methods.fused import can_fuse, energies, fused_merge
from merging.methods.notes import note
from merging.methods.params import INT8_MASK
from merging.methods.registry import SAME_IN_MERGEKIT, Method, Param, register
from merging.methods.selection import drop_ties_, top_k_mask, value_at_rank
from merging.methods.sparsify import sum_of_squares
from merging.methods.task_arithmetic import ScratchWorkspace, delta_of, widened

SELECT_TOPK = Param(
    name="select_topk", scope="global", default=1.0, low=0.0, high=1.0, kind="float",
    help="Fraction of entries kept, those where the task vectors vary most across models (1 = all).", ui_start=0.5,
    role="kept_fraction",
)
UNIFORM_BELOW = 1e-6  # mergekit: coefficients fall back to uniform when Σ mean(δ_i²) is below this
DIVISOR_FLOOR = 1e-6  # mergekit: the disjoint mean's divisor Σ c_i [agree_i] is clamped at this


def select_by_variance_(deltas: list[torch.Tensor], select_topk: float, ws: Workspace) -> None:
    """Zero, in every delta, all but the int(select_topk · #nonzero-variance) entries of largest variance across
    models (population variance, one mask shared by all models)."""
    if select_topk >= 1:
        return
    if select_topk <= 0:
        for delta in deltas:
            delta.zero_()
        return
    mean = ws.get("sign", torch.float32).copy_(deltas[0])
    for delta in deltas[1:]:
        mean.add_(delta)
    mean.div_(len(deltas))
    variance = ws.get("agree", torch.float32).zero_()
    centered = ws.get("scores", torch.float32)
    for delta in deltas:
        torch.sub(delta, mean, out=centered)
        variance.addcmul_(centered, centered)
    variance.div_(len(deltas))
    k = int(int(torch.count_nonzero(variance)) * select_topk)
    if k == 0:
        for delta in deltas:
            delta.zero_()
        return
    keep = _top_k_float_mask(variance, k, centered, ws)
    for delta in deltas:
        delta.mul_(keep)  # a float 0/1 multiply: ~5x cheaper than a bool masked_fill_ on the CPU


def _top_k_float_mask(scores: torch.Tensor, k: int, out: torch.Tensor, ws: Workspace) -> torch.Tensor:
    """`out` = 1.0 at exactly the k largest scores (non-negative float32; ties at the threshold: the later ones in
    flat order stay, as in top_k_mask), 0.0 elsewhere. Float compares cost a fraction of bool ones on the CPU."""
    flat = scores.reshape(-1)
    n = flat.numel()
    if k >= n or scores.dtype != torch.float32 or not scores.is_contiguous():
        return out.copy_(top_k_mask(scores, k, ws))
    threshold = value_at_rank(flat, n - k, ws)
    keep = torch.ge(scores, threshold.value, out=out)
    excess = n - threshold.n_less - k  # entries tied at the threshold beyond k: drop the first ones
    if excess > 0:
        drop_ties_(keep, torch.eq(flat, threshold.value, out=ws.get("bool", torch.bool).view(-1)), first=excess)
    return keep


def coefficients(deltas: list[torch.Tensor]) -> list[float]:
    """SCE's coefficients of whole task vectors (the plain path; the fused one gets its energies from fused.energies)."""
    return coefficients_from_energies([sum_of_squares(delta) / max(1, delta.numel()) for delta in deltas])


def coefficients_from_energies(energies: list[float]) -> list[float]:
    """The energies mean(δ_i²) normalised to sum 1, or uniform when that sum is below UNIFORM_BELOW (most LLM
    tensors: noted). Energies must not depend on torch's thread count (both paths use blocked norms)."""
    total = sum(energies)
    if abs(total) < UNIFORM_BELOW:
        note(f"sce: task-vector energy {total:.3g} < {UNIFORM_BELOW:g}, so coefficients fell back to uniform")
        return [1.0 / len(energies)] * len(energies)
    return [energy / total for energy in energies]


def sce_mix_(deltas: list[torch.Tensor], params: dict, base: torch.Tensor | None = None) -> torch.Tensor:
    """The SCE mixed task vector (plus `base` when given) from float32 task vectors the caller owns (overwritten)."""
    select_by_variance_(deltas, params.get("select_topk", 1.0), ScratchWorkspace(deltas[0]))
    weights = coefficients(deltas)
    return consensus_merge_(deltas, weights, scales=weights, min_divisor=DIVISOR_FLOOR, base=base)


def sce(base, tensors, model_params, params, generator) -> torch.Tensor:
    if params.get("select_topk", 1.0) >= 1 and can_fuse(base, tensors):
        weights = coefficients_from_energies(energies(base, tensors))
        return fused_merge(base, tensors, [1.0] * len(tensors), densities=None, consensus=True, normalize=True,
                           scale=1.0, coefficients=weights, min_divisor=DIVISOR_FLOOR)
    base = widened(base)
    # the first task vector becomes the result; the others are scratch
    return sce_mix_([delta_of(t, base, None if i == 0 else f"delta{i}") for i, t in enumerate(tensors)], params, base)


register(
    Method(
        name="sce", family="sce",
        explanation="Keep the entries where task vectors disagree most, weight models by task-vector energy, "
        "then TIES sign election.",
        formula="m = top-k variance mask; c_i = mean(δ_i²)/Σ_j mean(δ_j²); out = base + Σ c_i [sign δ_i = s] m δ_i "
        "/ max(Σ c_i [sign δ_i = s], 1e-6)",
        params=(SELECT_TOPK, INT8_MASK), base="required", random=False, min_models=1, max_models=None,
        fn=sce, mergekit=SAME_IN_MERGEKIT,
    )
)
