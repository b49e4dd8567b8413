"""Sparsifiers for task vectors (per tensor, mergekit 0.1.5 semantics) and the norm-matching rescale.

Each takes a float32 delta and returns a new sparsified delta; the input is never modified.
"""

from __future__ import annotations

import torch

from merging.methods.selection import rank_window_mask, top_k_mask

RESCALE_EPS = 1e-7


def rescale(delta: torch.Tensor, kept: torch.Tensor, mode: bool | str, keep_probability: float) -> torch.Tensor:
    """Scale the kept entries back up. `True`: match the L1 norm of the unpruned delta (mergekit; skipped when
    either norm is below 1e-7); "inverse_density": divide by the keep probability (the DARE paper); False: none."""
    if mode is False or mode is None:
        return kept
    if mode == "inverse_density":
        return kept.div_(keep_probability) if keep_probability > 0 else kept
    before = float(delta.abs().sum())
    after = float(kept.abs().sum())
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return kept
    return kept.mul_(before / after)


def magnitude(delta: torch.Tensor, density: float, rescale_mode: bool | str = False) -> torch.Tensor:
    """Keep exactly k = max(1, int(density·numel)) entries of largest |δ|; density ≥ 1 keeps everything."""
    if density >= 1:
        return delta.clone()
    if density <= 0 or delta.numel() == 0:
        return torch.zeros_like(delta)
    k = max(1, int(density * delta.numel()))
    mask = top_k_mask(delta.abs(), k)
    return rescale(delta, delta * mask, rescale_mode, density)


def random(
    delta: torch.Tensor, density: float, rescale_mode: bool | str, generator: torch.Generator | None
) -> torch.Tensor:
    """DARE: keep each entry with probability `density` (independent draws from `generator`)."""
    if density >= 1:
        return delta.clone()
    mask = torch.rand(delta.shape, generator=generator, dtype=torch.float32) < density
    return rescale(delta, delta * mask, rescale_mode, density)


def breadcrumbs(delta: torch.Tensor, density: float, gamma: float, rescale_mode: bool | str = False) -> torch.Tensor:
    """Drop the top int(gamma·n) outliers and the smallest entries so that int(density·n) in the middle remain."""
    if density >= 1:
        return delta.clone()
    n = delta.numel()
    target = int(density * n)
    n_top = int(gamma * n)
    n_bottom = max(0, n - target - n_top)
    mask = rank_window_mask(delta.abs(), n_bottom, n_bottom + target)
    return rescale(delta, delta * mask, rescale_mode, density)


def della(
    delta: torch.Tensor, density: float, epsilon: float, rescale_mode: bool | str, generator: torch.Generator | None
) -> torch.Tensor:
    """DELLA MagPrune: within each row rank |δ| (0 = smallest) and keep an entry with probability
    (density − ε) + 2ε·rank/(n−1). One-dimensional tensors are one row; a one-element row keeps with p = density."""
    if density >= 1:
        return delta.clone()
    if density <= 0:
        return torch.zeros_like(delta)
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)
    n = rows.shape[1]
    order = torch.argsort(rows.abs(), dim=1)
    ranks = torch.empty_like(rows)
    positions = torch.arange(n, dtype=rows.dtype).expand_as(rows)
    ranks.scatter_(1, order, positions)
    relative = ranks / (n - 1) if n > 1 else torch.full_like(rows, 0.5)
    probability = relative.mul_(2 * epsilon).add_(density - epsilon)
    mask = torch.rand(rows.shape, generator=generator, dtype=torch.float32) < probability
    return rescale(delta, (rows * mask).reshape(delta.shape), rescale_mode, density)
