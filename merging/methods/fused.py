"""A fused, chunked path for the big-tensor cases that dominate merge time: task arithmetic, magnitude pruning
(ties, magnitude_prune) and sce without selection, on float32 tensors.

The plain path materialises every task vector (an allocation and several passes over memory each). Here task
vectors are never stored: a counting pass over x_i − base finds each model's magnitude threshold (radix digits of
|δ|, exact, see selection.py), and one combine pass recomputes δ_i chunk by chunk, prunes, weights, elects signs and
writes the output — all while the chunk is in the CPU cache. Results equal the plain path's (tests check this).
"""

from __future__ import annotations

import torch

from merging.methods.chunks import buffer, for_each_chunk
from merging.methods.registry import note
from merging.methods.selection import value_at_rank

MIN_FUSED = 1 << 18  # elements; smaller tensors take the plain path (no thread hand-over for them)
_TOP_DIGIT_SHIFT = 20  # first radix digit of |δ|'s bit pattern: bits 30..20 (sign cleared), 2048 bins


def can_fuse(base: torch.Tensor | None, tensors: list[torch.Tensor]) -> bool:
    return (
        base is not None and base.numel() >= MIN_FUSED and base.dtype == torch.float32
        and all(t.dtype == torch.float32 and t.shape == base.shape for t in tensors)
    )


class _Threshold:
    """Keep |δ| ≥ value (as int32 bits), except the listed flat indices (surplus ties at the threshold)."""

    def __init__(self, bits: int, drop: torch.Tensor):
        self.bits = bits
        self.drop = drop


def _magnitude_bits(x: torch.Tensor, base: torch.Tensor, scratch: dict, role: str) -> torch.Tensor:
    delta = torch.sub(x, base, out=buffer(scratch, role, x))
    return torch.bitwise_and(delta.view(torch.int32), 0x7FFFFFFF, out=buffer(scratch, role + "_bits", x, torch.int32))


def _thresholds(base: torch.Tensor, xs: list[torch.Tensor], keep_counts: list[int | None]) -> list[_Threshold | None]:
    """Per model, the exact magnitude threshold that keeps keep_counts[i] entries (None: keep everything)."""
    todo = [i for i, k in enumerate(keep_counts) if k is not None]
    if not todo:
        return [None] * len(xs)
    n = base.numel()

    def count_digits(start: int, stop: int, scratch: dict) -> None:
        counts = scratch.setdefault("counts", torch.zeros(len(todo), 2048, dtype=torch.int64))
        for row, i in enumerate(todo):
            bits = _magnitude_bits(xs[i][start:stop], base[start:stop], scratch, "delta")
            counts[row] += torch.bincount(bits.bitwise_right_shift_(_TOP_DIGIT_SHIFT), minlength=2048)

    counts = sum(s["counts"] for s in for_each_chunk(n, count_digits))
    ranks = [n - keep_counts[i] for i in todo]  # ascending rank of the smallest kept |δ|
    cumulative = counts.cumsum(1)
    digits, below = [], []
    for row, rank in enumerate(ranks):
        digit = int(torch.searchsorted(cumulative[row], rank, right=True))
        digits.append(digit)
        below.append(int(cumulative[row, digit - 1]) if digit > 0 else 0)

    def gather_candidates(start: int, stop: int, scratch: dict) -> None:
        found = scratch.setdefault("candidates", [[] for _ in todo])
        for row, i in enumerate(todo):
            bits = _magnitude_bits(xs[i][start:stop], base[start:stop], scratch, "delta")
            in_bin = torch.bitwise_right_shift(bits, _TOP_DIGIT_SHIFT) == digits[row]
            found[row].append(bits[in_bin])

    parts = for_each_chunk(n, gather_candidates)
    result: list[_Threshold | None] = [None] * len(xs)
    for row, i in enumerate(todo):
        candidates = torch.cat([c for part in parts for c in part["candidates"][row]])
        found = value_at_rank(candidates.view(torch.float32), ranks[row] - below[row])
        if found.value == 0:  # at most k nonzero entries: all of them stay
            continue
        bits = int(torch.tensor([found.value], dtype=torch.float32).view(torch.int32))
        excess = n - (below[row] + found.n_less) - keep_counts[i]
        result[i] = _Threshold(bits, _surplus_ties(base, xs[i], bits, excess))
    return result


def _surplus_ties(base: torch.Tensor, x: torch.Tensor, bits: int, excess: int) -> torch.Tensor:
    """Flat indices of the first `excess` entries whose |δ| equals the threshold (they are dropped, so exactly k
    entries stay). Rare: needs equal magnitudes at the threshold."""
    if excess <= 0:
        return torch.empty(0, dtype=torch.int64)

    def find(start: int, stop: int, scratch: dict) -> None:
        tied = torch.nonzero(_magnitude_bits(x[start:stop], base[start:stop], scratch, "delta") == bits).squeeze(1)
        scratch.setdefault("tied", []).append(tied + start)

    parts = for_each_chunk(base.numel(), find)
    return torch.cat([t for part in parts for t in part.get("tied", [])])[:excess]


def _energies(base: torch.Tensor, xs: list[torch.Tensor]) -> list[float]:
    def accumulate(start: int, stop: int, scratch: dict) -> None:
        sums = scratch.setdefault("energy", [0.0] * len(xs))
        for i, x in enumerate(xs):
            part = x[start:stop]
            delta = torch.sub(part, base[start:stop], out=buffer(scratch, "delta", part))
            sums[i] += float(torch.dot(delta, delta))

    parts = for_each_chunk(base.numel(), accumulate)
    return [sum(part["energy"][i] for part in parts) / base.numel() for i in range(len(xs))]


def fused_merge(
    base: torch.Tensor,
    tensors: list[torch.Tensor],
    weights: list[float],
    *,
    densities: list[float] | None,
    consensus: bool,
    normalize: bool,
    scale: float,
    sce: bool = False,
) -> torch.Tensor:
    """base + scale·(Σ_i [agree_i] w_i prune(x_i − base)) / divisor, in one combine pass. With sce=True the weights
    are SCE's energy coefficients (computed here) and the divisor is clamped at 1e-6."""
    shape = base.shape
    base = base.reshape(-1)
    xs = [t.reshape(-1) for t in tensors]
    n = base.numel()
    keep_counts = [None] * len(xs)
    if densities is not None:
        keep_counts = [None if d >= 1 else max(1, int(d * n)) if d > 0 else 0 for d in densities]
    thresholds = _thresholds(base, xs, [k if k else None for k in keep_counts])
    zeroed = [k == 0 for k in keep_counts]  # density 0: the model contributes nothing
    if sce:
        energies = _energies(base, xs)
        total = sum(energies)
        if abs(total) < 1e-6:
            note(f"sce: task-vector energy {total:.3g} < 1e-06, so coefficients fell back to uniform")
            weights = [1.0 / len(xs)] * len(xs)
        else:
            weights = [e / total for e in energies]
    out = torch.empty_like(base)
    total_weight = sum(weights)

    def combine(start: int, stop: int, scratch: dict) -> None:
        base_part = base[start:stop]
        mixed = buffer(scratch, "mixed", base_part).zero_()
        deltas = []
        for i, x in enumerate(xs):
            delta = torch.sub(x[start:stop], base_part, out=buffer(scratch, f"delta{i}", base_part))
            threshold = thresholds[i]
            if zeroed[i]:
                delta.zero_()
            elif threshold is not None:
                keep = buffer(scratch, "keep", base_part)
                bits = torch.bitwise_and(delta.view(torch.int32), 0x7FFFFFFF, out=keep.view(torch.int32))
                delta.mul_(torch.ge(bits, threshold.bits, out=buffer(scratch, "keep_bool", base_part, torch.bool)))
                if threshold.drop.numel():
                    inside = threshold.drop[(threshold.drop >= start) & (threshold.drop < stop)]
                    delta[inside - start] = 0
            if not sce and weights[i] != 1:
                delta.mul_(weights[i])
            deltas.append(delta)
        if consensus:
            sign = buffer(scratch, "sign", base_part).copy_(deltas[0])
            for delta in deltas[1:]:
                sign.add_(delta)
            sign.sign_().add_(0.5).sign_()  # −1, 0, +1 → −1, +1, +1
            agree = buffer(scratch, "agree", base_part)
            divisor = buffer(scratch, "divisor", base_part).zero_()
            for delta, weight in zip(deltas, weights):
                torch.sign(delta, out=agree).eq_(sign)
                mixed.addcmul_(delta, agree, value=weight if sce else 1.0)
                divisor.add_(agree, alpha=weight)
            if sce:
                mixed.div_(divisor.clamp_(min=1e-6))
            elif normalize:
                mixed.div_(divisor.add_(torch.eq(divisor, 0, out=agree)))
        else:
            for delta in deltas:
                mixed.add_(delta)
            if normalize:
                mixed.div_(total_weight if abs(total_weight) >= 1e-8 else 1.0)
        torch.add(base_part, mixed, alpha=scale, out=out[start:stop])

    for_each_chunk(n, combine)
    return out.view(shape)
