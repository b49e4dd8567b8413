"""Arcee Fusion (mergekit 0.1.5's `arcee_fusion`): take the fine-tune's value only where it moved an entry unusually
far, judged by |change| times how much the row's softmax distribution changed; keep the base everywhere else.

mergekit estimates the cut-off's quartiles from a random sample of 1M entries on bigger tensors (drawn from the
global random state, so two of its runs can differ there); this module ranks every entry, so it equals mergekit
exactly on tensors up to 1M entries and is its exact, reproducible version above.
"""

from __future__ import annotations

import torch

from merging.methods.common import as_float32
from merging.methods.registry import SAME_IN_MERGEKIT, Method, register

PROBABILITY_FLOOR = 1e-8  # added to both distributions so log(p/q) stays finite (mergekit's value)
OUTLIER_SPREAD = 1.5  # Tukey's fence: median + 1.5 × interquartile range


def row_divergence(tuned: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """KL(softmax(tuned) ‖ softmax(base)) along the last dimension, one value per row (kept as a size-1 dimension
    so it broadcasts over the row)."""
    p = torch.softmax(tuned, dim=-1) + PROBABILITY_FLOOR
    q = torch.softmax(base, dim=-1) + PROBABILITY_FLOOR
    return (p * torch.log(p / q)).sum(dim=-1, keepdim=True)


def outlier_cutoff(scores: torch.Tensor) -> torch.Tensor:
    """median + 1.5·(q3 − q1) of all scores, each quartile the element at rank ⌊q·(n − 1)⌋ in ascending order (no
    interpolation, as mergekit). A 0-d float32 tensor: computed in the scores' dtype so the comparison with them
    rounds as mergekit's does. kthvalue, not the radix selection of selection.py: scores can be slightly negative
    (rounding in the divergence) and that selection needs non-negative values."""
    flat = scores.reshape(-1)
    last = flat.numel() - 1
    q1, median, q3 = (flat.kthvalue(rank + 1).values for rank in (last // 4, last // 2, 3 * last // 4))
    return median + OUTLIER_SPREAD * (q3 - q1)


def arcee_fusion(base, tensors, model_params, params, generator) -> torch.Tensor:
    base32 = as_float32(base)
    delta = as_float32(tensors[0]) - base32
    importance = delta.abs() * row_divergence(as_float32(tensors[0]), base32)
    keep = importance >= outlier_cutoff(importance)
    return base32 + delta * keep


register(Method(
    name="arcee_fusion", family="arcee_fusion",
    explanation="Take the fine-tune's value only where it changed an entry unusually much (an outlier of "
    "|change| × the row's distribution shift); keep the base elsewhere.",
    formula="s = |x − base|·KL(softmax(x)‖softmax(base)) per row; out = base + (x − base)·[s ≥ median(s) + 1.5·IQR(s)]",
    params=(), base="required", random=False, min_models=1, max_models=1, fn=arcee_fusion,
    mergekit=SAME_IN_MERGEKIT,
))
