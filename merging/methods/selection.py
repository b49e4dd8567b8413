"""Exact rank selection on non-negative float32 tensors without a full sort.

A full sort of a 4096×4096 tensor takes seconds on a laptop CPU; mergekit sorts every tensor. Non-negative float32
values order like their int32 bit patterns, so counting passes over their digits (a radix select) narrow the
candidates until kthvalue on the few left is cheap: the value at any rank, with the counts of elements below and equal
to it, in a few linear passes. Ties at a boundary are ranked by flat index (a stable sort's order), so the number of
selected elements is always exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from merging.methods.common import Workspace

# Digits of a non-negative float32's int32 pattern, most significant first: bits 30..20, 19..10, 9..0.
_DIGITS = ((20, 2048), (10, 1024), (0, 1024))
_SMALL = 1 << 13  # at or below this many candidates, kthvalue on them is cheaper than another counting pass


@dataclass(frozen=True)
class RankValue:
    value: float  # the value at the asked rank
    n_less: int  # elements strictly below it
    n_equal: int  # elements equal to it


def value_at_rank(scores: torch.Tensor, rank: int, workspace: Workspace | None = None) -> RankValue:
    """The value with ascending 0-based `rank` in a flat, contiguous, non-negative float32 tensor."""
    below = 0  # elements known to be smaller than every remaining candidate
    candidates = scores
    for shift, bins in _DIGITS:
        if candidates.numel() <= _SMALL:
            break
        full = candidates is scores and workspace is not None
        bits = candidates.view(torch.int32)
        digits = torch.bitwise_right_shift(bits, shift, out=workspace.get("digits", torch.int32).view(-1)) if full \
            else torch.bitwise_right_shift(bits, shift)
        if bins != 2048:
            digits.bitwise_and_(bins - 1)
        cumulative = torch.bincount(digits, minlength=bins).cumsum(0)
        digit = int(torch.searchsorted(cumulative, rank - below, right=True))
        below += int(cumulative[digit - 1]) if digit > 0 else 0
        in_bin = torch.eq(digits, digit, out=workspace.get("bool", torch.bool).view(-1)) if full \
            else digits == digit
        candidates = candidates[in_bin]
        if shift == 0:  # every bit fixed: all candidates are equal
            return RankValue(float(candidates[0]), below, candidates.numel())
    value = float(candidates.kthvalue(rank - below + 1).values)
    flags = torch.empty_like(candidates)  # float 0/1 flags: summing floats is much cheaper than summing bools
    n_less = int(torch.lt(candidates, value, out=flags).sum())
    n_equal = int(torch.eq(candidates, value, out=flags).sum())
    return RankValue(value, below + n_less, n_equal)


def rank_window_mask(scores: torch.Tensor, start: int, stop: int, workspace: Workspace | None = None) -> torch.Tensor:
    """Bool mask of the elements whose ascending rank lies in [start, stop). With a workspace the mask is its
    "bool" buffer (valid until the workspace is used again)."""
    flat = scores.reshape(-1)
    if flat.dtype != torch.float32:
        flat = flat.float()
    flat = flat.contiguous()
    n = flat.numel()
    start, stop = max(0, start), min(n, stop)
    if stop <= start:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if start == 0 and stop == n:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    lo = value_at_rank(flat, start, workspace) if start > 0 else None
    hi = value_at_rank(flat, stop - 1, workspace) if stop < n else None
    out = workspace.get("bool", torch.bool).view(-1) if workspace is not None else None
    if lo is not None:
        keep = torch.ge(flat, lo.value, out=out) if out is not None else torch.ge(flat, lo.value)
        if hi is not None:
            keep.logical_and_(torch.le(flat, hi.value))
    else:
        keep = torch.le(flat, hi.value, out=out) if out is not None else torch.le(flat, hi.value)
    # Elements tied with a boundary value: drop the first ones ranked below `start`, the last ones past `stop`.
    if lo is not None and lo.n_less < start:
        drop_ties_(keep, torch.logical_and(flat == lo.value, keep), first=start - lo.n_less)
    if hi is not None and hi.n_less + hi.n_equal > stop:
        drop_ties_(keep, torch.logical_and(flat == hi.value, keep), last=hi.n_less + hi.n_equal - stop)
    return keep.view(scores.shape)


def drop_ties_(target: torch.Tensor, tied: torch.Tensor, *, first: int = 0, last: int = 0) -> torch.Tensor:
    """Zero `target` (a value, or a float or bool keep-mask) at the `first` first and the `last` last positions, in
    flat order, where the bool tensor `tied` is true: how every exact selection here keeps exactly k entries among
    those tied at its threshold. Counts ≤ 0 drop nothing."""
    if first <= 0 and last <= 0:
        return target
    positions = torch.nonzero(tied.reshape(-1)).squeeze(1)
    flat = target.view(-1)
    if first > 0:
        flat[positions[:first]] = 0
    if last > 0:
        flat[positions[positions.numel() - last:]] = 0
    return target


def top_k_mask(scores: torch.Tensor, k: int, workspace: Workspace | None = None) -> torch.Tensor:
    """Bool mask of exactly the `k` largest elements."""
    n = scores.numel()
    return rank_window_mask(scores, n - k, n, workspace)
