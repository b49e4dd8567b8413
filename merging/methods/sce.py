"""SCE (Select, Calculate, Erase), mergekit 0.1.5 semantics: one variance-based selection mask for all task vectors,
per-model coefficients from the task vectors' energy, TIES sign election, coefficient-weighted disjoint mean."""

from __future__ import annotations

import torch

from merging.methods.common import as_float32
from merging.methods.consensus import agreement_masks, elect_sign
from merging.methods.params import INT8_MASK
from merging.methods.registry import Method, Param, note, register
from merging.methods.selection import top_k_mask

SELECT_TOPK = Param(
    "select_topk", "global", 1.0, 0.0, 1.0, "float",
    "Fraction of entries kept, those where the task vectors vary most across models (1 = all).",
)
UNIFORM_BELOW = 1e-6  # mergekit: coefficients fall back to uniform when Σ mean(δ_i²) is below this


def variance_mask(deltas: list[torch.Tensor], select_topk: float) -> torch.Tensor | None:
    """1.0 on the int(select_topk · #nonzero-variance) entries of largest variance across models; None = keep all."""
    if select_topk >= 1:
        return None
    if select_topk <= 0:
        return torch.zeros_like(deltas[0])
    variance = torch.var(torch.stack(deltas), dim=0, unbiased=False)
    k = int(int(torch.count_nonzero(variance)) * select_topk)
    if k == 0:
        return torch.zeros_like(variance)
    return top_k_mask(variance, k).to(variance.dtype)


def coefficients(deltas: list[torch.Tensor]) -> list[float]:
    """mean(δ_i²) normalised to sum 1, or uniform when that sum is below 1e-6 (most LLM tensors: noted)."""
    energies = [float(delta.square().mean()) for delta in deltas]
    total = sum(energies)
    if abs(total) < UNIFORM_BELOW:
        note(f"sce: task-vector energy {total:.3g} < {UNIFORM_BELOW:g}, so coefficients fell back to uniform")
        return [1.0 / len(deltas)] * len(deltas)
    return [energy / total for energy in energies]


def sce_deltas(
    deltas: list[torch.Tensor], model_params: list[dict], params: dict, generator: torch.Generator | None
) -> torch.Tensor:
    deltas = [as_float32(d) for d in deltas]
    mask = variance_mask(deltas, params.get("select_topk", 1.0))
    if mask is not None:
        deltas = [d * mask for d in deltas]
    weights = coefficients(deltas)
    agree = agreement_masks(deltas, elect_sign(deltas))
    mixed = torch.zeros_like(deltas[0])
    divisor = torch.zeros_like(deltas[0])
    for delta, weight, agreement in zip(deltas, weights, agree):
        agreement.mul_(weight)  # erased weight c_i·mask_i
        mixed.addcmul_(delta, agreement)
        divisor.add_(agreement)
    return mixed.div_(divisor.clamp_(min=1e-6))


def sce(
    base: torch.Tensor | None, tensors: list[torch.Tensor], model_params: list[dict], params: dict,
    generator: torch.Generator | None,
) -> torch.Tensor:
    base = as_float32(base)
    return sce_deltas([as_float32(t) - base for t in tensors], model_params, params, generator).add_(base)


register(
    Method(
        name="sce", family="sce",
        explanation="Keep the entries where task vectors disagree most, weight models by task-vector energy, "
        "then TIES sign election.",
        formula="m = top-k variance mask; c_i = mean(δ_i²)/Σ_j mean(δ_j²); out = base + Σ c_i [sign δ_i = s] m δ_i "
        "/ max(Σ c_i [sign δ_i = s], 1e-6)",
        params=(SELECT_TOPK, INT8_MASK), base="required", random=False, min_models=1, max_models=None,
        fn=sce, fn_deltas=sce_deltas,
    )
)
