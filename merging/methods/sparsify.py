"""Sparsifiers for task vectors (per tensor, mergekit 0.1.5 semantics) and the norm-matching rescale.

The `*_` functions prune a float32 delta the caller owns in place (the merge paths, which avoid allocating per
operation); the plain functions return a pruned copy and never modify their input.
"""

from __future__ import annotations

import torch

from merging.errors import RecipeError
from merging.methods.common import Workspace, default_generator
from merging.methods.selection import drop_ties_, rank_window_mask, top_k_mask, value_at_rank

RESCALE_EPS = 1e-7
Rescale = bool | str | None


_NORM_BLOCK = 8192  # elements per row of the blocked norms below


def blocked_norms(tensor: torch.Tensor, ord: float) -> torch.Tensor:
    """Per-block `ord` norms of the flat tensor (blocks of 8192, the last one shorter). Each block is reduced by one
    thread in a fixed order, so the results do not depend on torch's thread count: one whole-tensor float32 norm
    does (the engine computes with one thread, live merges with torch's default), and with it DARE's rescale factor
    and every kept entry. A float64 whole-tensor norm would be deterministic enough but costs 7x more."""
    flat = tensor.reshape(-1)
    rows = flat.numel() // _NORM_BLOCK
    parts = []
    if rows:
        parts.append(torch.linalg.vector_norm(flat[: rows * _NORM_BLOCK].view(rows, _NORM_BLOCK), ord=ord, dim=1))
    if rows * _NORM_BLOCK < flat.numel():
        parts.append(torch.linalg.vector_norm(flat[rows * _NORM_BLOCK:], ord=ord).reshape(1))
    return torch.cat(parts) if parts else flat.new_zeros(1)


def _l1(tensor: torch.Tensor) -> float:
    return float(blocked_norms(tensor, 1).sum(dtype=torch.float64))


def sum_of_squares(tensor: torch.Tensor) -> float:
    """Σ x², independent of torch's thread count (see blocked_norms)."""
    return float(blocked_norms(tensor, 2).double().square().sum())


def rescale_(delta: torch.Tensor, l1_before: float, mode: Rescale, keep_probability: float) -> torch.Tensor:
    """Scale the kept entries back up. True: match the L1 norm of the unpruned delta (mergekit; skipped when either
    norm is below 1e-7); "inverse_density": divide by the keep probability (the DARE paper); False/None: nothing."""
    if mode is None or mode is False:
        return delta
    if mode == "inverse_density":
        return delta.div_(keep_probability) if keep_probability > 0 else delta
    l1_after = _l1(delta)
    if l1_before < RESCALE_EPS or l1_after < RESCALE_EPS:
        return delta
    return delta.mul_(l1_before / l1_after)


def magnitude_(delta: torch.Tensor, density: float, rescale_mode: Rescale, ws: Workspace) -> torch.Tensor:
    """Keep exactly k = max(1, int(density·numel)) entries of largest |δ|; density ≥ 1 keeps everything. When at most
    k entries are nonzero nothing changes (which zeros count as kept does not change a value)."""
    if density >= 1:
        return delta
    n = delta.numel()
    if density <= 0 or n == 0:
        return delta.zero_()
    k = max(1, int(density * n))
    if delta.dtype != torch.float32 or not delta.is_contiguous():
        return _magnitude_by_mask_(delta, k, rescale_mode, density, ws)
    # |δ| compared as int32 bit patterns: clearing the sign bit is abs, and non-negative floats order like their bits.
    magnitude_bits = torch.bitwise_and(delta.view(torch.int32), 0x7FFFFFFF, out=ws.get("bits", torch.int32))
    threshold = value_at_rank(magnitude_bits.view(torch.float32).view(-1), n - k, ws)
    if threshold.value == 0:  # at most k nonzero entries: all of them stay
        return delta
    l1_before = _l1(delta) if rescale_mode is True else 0.0
    threshold_bits = int(torch.tensor([threshold.value], dtype=torch.float32).view(torch.int32))
    keep = torch.ge(magnitude_bits, threshold_bits, out=ws.get("digits", torch.int32).view(torch.float32))
    excess = n - threshold.n_less - k  # entries tied at the threshold beyond k: drop the first ones
    if excess > 0:
        drop_ties_(keep, magnitude_bits == threshold_bits, first=excess)
    delta.mul_(keep)
    return rescale_(delta, l1_before, rescale_mode, density)


def _magnitude_by_mask_(delta: torch.Tensor, k: int, rescale_mode: Rescale, density: float,
                        ws: Workspace) -> torch.Tensor:
    """The general path (float64 or strided deltas)."""
    l1_before = _l1(delta) if rescale_mode is True else 0.0
    keep = top_k_mask(delta.abs().float(), k)
    delta.masked_fill_(keep.logical_not_(), 0)
    return rescale_(delta, l1_before, rescale_mode, density)


def random_(delta: torch.Tensor, density: float, rescale_mode: Rescale, generator: torch.Generator | None,
            ws: Workspace) -> torch.Tensor:
    """DARE: keep each entry with probability `density` (independent uniform draws from `generator`)."""
    if density >= 1:
        return delta
    l1_before = _l1(delta) if rescale_mode is True else 0.0
    noise = torch.rand(delta.shape, generator=default_generator(generator), out=ws.get("scores", torch.float32))
    # keep where noise < density: a float 0/1 mask and a multiply (a bool mask and masked_fill_ cost ~5x more on the
    # CPU); dropped entries become ±0
    delta.mul_(noise.lt_(density))
    return rescale_(delta, l1_before, rescale_mode, density)


def breadcrumbs_(delta: torch.Tensor, density: float, gamma: float, rescale_mode: Rescale,
                 ws: Workspace) -> torch.Tensor:
    """Drop the top int(gamma·n) outliers and the smallest entries so that int(density·n) in the middle remain."""
    if density >= 1:
        return delta
    n = delta.numel()
    target = int(density * n)
    n_bottom = max(0, n - target - int(gamma * n))
    l1_before = _l1(delta) if rescale_mode is True else 0.0
    scores = torch.abs(delta, out=ws.get("scores", torch.float32))
    keep = rank_window_mask(scores, n_bottom, n_bottom + target, ws)
    delta.masked_fill_(keep.logical_not_(), 0)
    return rescale_(delta, l1_before, rescale_mode, density)


def della_(delta: torch.Tensor, density: float, epsilon: float, rescale_mode: Rescale,
           generator: torch.Generator | None, ws: Workspace) -> torch.Tensor:
    """DELLA MagPrune: within each row rank |δ| (0 = smallest) and keep an entry with probability
    (density − ε) + 2ε·rank/(n−1). A 1-D tensor is one row; a one-element row keeps with p = density."""
    if density >= 1:
        return delta
    if density <= 0:
        return delta.zero_()
    if not (0 < density - epsilon and density + epsilon < 1):
        raise RecipeError(
            f"della: density {density:g} ± epsilon {epsilon:g} leaves (0, 1); lower epsilon below "
            f"{min(density, 1 - density):g} or move density toward 0.5"
        )
    l1_before = _l1(delta) if rescale_mode is True else 0.0
    rows = delta.view(1, -1) if delta.dim() < 2 else delta.view(delta.shape[0], -1)
    n = rows.shape[1]
    order = torch.argsort(rows.abs(), dim=1)
    probability = torch.empty_like(rows)
    positions = torch.arange(n, dtype=rows.dtype, device=rows.device).expand_as(rows)
    probability.scatter_(1, order, positions)  # the rank of every entry within its row
    del order
    if n > 1:
        probability.mul_(2 * epsilon / (n - 1)).add_(density - epsilon)
    else:
        probability.fill_(density)
    noise = torch.rand(rows.shape, generator=default_generator(generator), dtype=rows.dtype)
    rows.masked_fill_(noise.ge_(probability).bool(), 0)
    return rescale_(delta, l1_before, rescale_mode, density)


def _copy(delta: torch.Tensor) -> torch.Tensor:
    return delta.float().clone() if delta.dtype == torch.float32 else delta.float()


def magnitude(delta: torch.Tensor, density: float, rescale_mode: Rescale = False) -> torch.Tensor:
    out = _copy(delta)
    return magnitude_(out, density, rescale_mode, Workspace(out))


def random(delta: torch.Tensor, density: float, rescale_mode: Rescale, generator: torch.Generator | None
           ) -> torch.Tensor:
    out = _copy(delta)
    return random_(out, density, rescale_mode, generator, Workspace(out))


def breadcrumbs(delta: torch.Tensor, density: float, gamma: float, rescale_mode: Rescale = False) -> torch.Tensor:
    out = _copy(delta)
    return breadcrumbs_(out, density, gamma, rescale_mode, Workspace(out))


def della(delta: torch.Tensor, density: float, epsilon: float, rescale_mode: Rescale,
          generator: torch.Generator | None) -> torch.Tensor:
    out = _copy(delta)
    return della_(out, density, epsilon, rescale_mode, generator, Workspace(out))
