"""Sign election (TIES) and the disjoint mean, on lists of weighted task vectors (no stacking: one buffer each)."""

from __future__ import annotations

import torch


def elect_sign(deltas: list[torch.Tensor]) -> torch.Tensor:
    """+1 where the sum of the deltas is ≥ 0, else −1 (mergekit's "sum" consensus; a zero sum elects +)."""
    total = deltas[0].clone()
    for delta in deltas[1:]:
        total.add_(delta)
    return torch.where(total >= 0, 1.0, -1.0)


def agreement_masks(deltas: list[torch.Tensor], sign: torch.Tensor) -> list[torch.Tensor]:
    """Per delta, 1.0 where its sign equals the elected sign (zeros, e.g. pruned entries, never agree)."""
    return [torch.sign(delta).eq_(sign) for delta in deltas]


def disjoint_sum(
    deltas: list[torch.Tensor], weights: list[float], masks: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ mask_i·δ_i and Σ mask_i·w_i (the divisor of the disjoint mean), for weighted deltas δ_i."""
    mixed = torch.zeros_like(deltas[0])
    divisor = torch.zeros_like(deltas[0])
    for delta, weight, mask in zip(deltas, weights, masks):
        mixed.addcmul_(delta, mask)
        divisor.add_(mask, alpha=weight)
    return mixed, divisor
