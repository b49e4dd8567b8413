"""A fused, chunked path for the big-tensor cases that dominate merge time: task arithmetic, magnitude pruning
(ties, magnitude_prune) and sce without selection, on float32 tensors.

The plain path materialises every task vector (an allocation and several passes over memory each). Here task
vectors are never stored: a counting pass over x_i − base finds each model's magnitude threshold (radix digits of
|δ|, exact, see selection.py), and one combine pass recomputes δ_i chunk by chunk, prunes, weights, elects signs and
writes the output — all while the chunk is in the CPU cache. Results equal the plain path's (tests check this).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch

from merging.methods.chunks import buffer, for_each_chunk, workers
from merging.methods.consensus import disjoint_mean_into, weight_sum_divisor
from merging.methods.selection import drop_ties_, value_at_rank
from merging.methods.sparsify import blocked_norms

MIN_FUSED = 1 << 18  # elements; smaller tensors take the plain path (no thread hand-over for them)
_TOP_DIGIT_SHIFT = 20  # first radix digit of |δ|'s bit pattern: bits 30..20 (sign cleared), 2048 bins


_FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def can_fuse(base: torch.Tensor | None, tensors: list[torch.Tensor]) -> bool:
    """Large contiguous float32/bf16/fp16 tensors of one shape (half-precision chunks are widened to float32), on
    the CPU: keeping chunks in the CPU cache is the point; on a GPU the plain path's whole-tensor ops are faster."""
    return (
        base is not None and base.numel() >= MIN_FUSED and base.dtype in _FUSED_DTYPES and base.is_contiguous()
        and base.device.type == "cpu"
        and all(t.dtype in _FUSED_DTYPES and t.shape == base.shape and t.is_contiguous() for t in tensors)
    )


def _f32(part: torch.Tensor, scratch: dict, role: str) -> torch.Tensor:
    """A float32 view of a chunk: itself, or a widened copy in a reused chunk buffer."""
    if part.dtype == torch.float32:
        return part
    return buffer(scratch, role, part, torch.float32).copy_(part)


class _Threshold:
    """Keep |δ| ≥ value, except, per chunk start, that many entries tied at the value (the first ones in flat
    order), so that exactly k entries stay."""

    def __init__(self, value: float, drops: dict[int, int], whole: set[int] | None = None):
        self.value = value
        self.drops = drops
        self.whole = whole or set()  # chunk starts where every tied entry is dropped (no search for them)
        # hardshrink keeps x where |x| > λ: with λ the float just below the value that is exactly |x| ≥ value,
        # one pass instead of abs, compare and multiply.
        self.shrink = float(torch.nextafter(torch.tensor(value), torch.tensor(0.0)))


def _abs_delta(x: torch.Tensor, base32: torch.Tensor, scratch: dict) -> torch.Tensor:
    """|x − base| in float32 for one chunk; `base32` is the chunk's base already widened (once for all models)."""
    delta = torch.sub(_f32(x, scratch, "x32"), base32, out=buffer(scratch, "delta", x, torch.float32))
    return torch.abs(delta, out=delta)


def _top_digits(magnitudes: torch.Tensor, scratch: dict) -> torch.Tensor:
    """First radix digit of non-negative floats: bits 30..20 of the pattern (exponent and 3 mantissa bits)."""
    out = buffer(scratch, "digits", magnitudes, torch.int32)
    return torch.bitwise_right_shift(magnitudes.view(torch.int32), _TOP_DIGIT_SHIFT, out=out)


def _bin_bounds(digit_low: int, digit_high: int) -> tuple[float, float]:
    """[low, high) float range of the values whose top digit lies in [digit_low, digit_high]."""
    bits = torch.tensor([digit_low << _TOP_DIGIT_SHIFT, (digit_high + 1) << _TOP_DIGIT_SHIFT], dtype=torch.int32)
    low, high = bits.view(torch.float32).tolist()
    return low, high


def _predicted_window(base: torch.Tensor, x: torch.Tensor, rank: int) -> tuple[float, float]:
    """A closed range [low, high] of |δ| values likely to hold the value at `rank`, from a strided sample of |δ|
    (a wrong guess costs two more passes)."""
    n = base.numel()
    stride = max(8, n // 65536)  # a sample of at most 65536 and at most an eighth of the entries
    sample = (x[::stride].float() - base[::stride].float()).abs_()
    m = sample.numel()
    margin = 0.01 + 4.0 / m**0.5
    # two selections instead of a sort of the sample (a sort of 64K floats cost more than the selections)
    low = sample.kthvalue(max(0, int((rank / n - margin) * m)) + 1).values
    high = sample.kthvalue(min(m - 1, int((rank / n + margin) * m)) + 1).values
    return float(low), float(high)


_REMEMBERED: ContextVar[dict | None] = ContextVar("remembered_thresholds", default=None)
_OUTPUT: ContextVar[torch.Tensor | None] = ContextVar("fused_output", default=None)


def _output_for(base: torch.Tensor, xs: list[torch.Tensor]) -> torch.Tensor:
    """The flat float32 tensor the combine pass writes: the caller's target where it fits, else a new one."""
    target = _OUTPUT.get()
    if (target is not None and target.dtype == torch.float32 and target.is_contiguous()
            and target.numel() == base.numel() and target.device == base.device
            and all(target.data_ptr() != t.data_ptr() for t in (base, *xs))):
        return target.view(-1)
    return torch.empty(base.shape, dtype=torch.float32, device=base.device).view(-1)


@contextmanager
def reusing(thresholds: dict | None = None, into: torch.Tensor | None = None) -> Iterator[None]:
    """What a fused merge within the block (this thread or task) may reuse, for a caller that merges the same
    unchanged tensors again and again (live merging: a weight slider moves, the sources do not).

    `thresholds`: magnitude thresholds are kept in this dict and reused, keyed by the tensors' storage (base and each
    x), the keep counts and the chunking; the caller keeps those tensors alive and unchanged while it uses the dict,
    and clears it when they change. None: found afresh.
    `into`: a result that fits it (float32, contiguous, as many elements, same device, no input's storage) is written
    there and a view of it returned: live merging hands a model's own parameter, so the merged values need no copy.
    None (or a tensor that does not fit): a new tensor, as always."""
    remembered, output = _REMEMBERED.set(thresholds), _OUTPUT.set(into)
    try:
        yield
    finally:
        _OUTPUT.reset(output)
        _REMEMBERED.reset(remembered)


def _thresholds(base: torch.Tensor, xs: list[torch.Tensor], keep_counts: list[int | None]) -> list[_Threshold | None]:
    memo = _REMEMBERED.get()
    if memo is None:
        return _find_thresholds(base, xs, keep_counts)
    key = (base.data_ptr(), base.numel(), base.dtype, tuple((x.data_ptr(), x.dtype) for x in xs),
           tuple(keep_counts), workers() < 2)
    if key not in memo:
        memo[key] = _find_thresholds(base, xs, keep_counts)
    return list(memo[key])


def _find_thresholds(base: torch.Tensor, xs: list[torch.Tensor], keep_counts: list[int | None]
                     ) -> list[_Threshold | None]:
    """Per model, the exact magnitude threshold that keeps keep_counts[i] entries (None: keep everything).
    One pass counts the entries above a sample-predicted value window [low, high] and keeps those inside it; the
    exact threshold is then found among those few. When the window holds a single value (bf16 inputs give few
    distinct |δ|), counting is enough. Only if the prediction missed, a digit histogram and a gather find it."""
    todo = [i for i, k in enumerate(keep_counts) if k is not None]
    result: list[_Threshold | None] = [None] * len(xs)
    if not todo:
        return result
    n = base.numel()
    ranks = [n - keep_counts[i] for i in todo]  # ascending rank of the smallest kept |δ|
    windows = [_predicted_window(base, xs[i], rank) for i, rank in zip(todo, ranks)]
    counted = _count_windows(base, [xs[i] for i in todo], windows)
    for i, rank, window, (n_above, chunks) in zip(todo, ranks, windows, counted):
        result[i] = _threshold_in_window(base, xs[i], rank, keep_counts[i], window, n_above, chunks)
    return result


def _count_windows(base: torch.Tensor, xs: list[torch.Tensor], windows: list[tuple[float, float]]
                   ) -> list[tuple[int, list[tuple[int, torch.Tensor]]]]:
    """One pass over every model: per model, the number of |δ| above its window and, per chunk start, the |δ| inside
    it (only their number, a scalar tensor, when the window is a single value)."""
    def count_and_gather(start: int, stop: int, scratch: dict) -> None:
        above_counts = scratch.setdefault("n_above", [[] for _ in xs])
        found = scratch.setdefault("candidates", [[] for _ in xs])
        base32 = _f32(base[start:stop], scratch, "base32")
        for row, (x, (low, high)) in enumerate(zip(xs, windows)):
            magnitudes = _abs_delta(x[start:stop], base32, scratch)
            above = torch.gt(magnitudes, high, out=buffer(scratch, "above", magnitudes, torch.float32))
            inside = torch.ge(magnitudes, low, out=buffer(scratch, "inside", magnitudes, torch.float32)).sub_(above)
            above_counts[row].append(above.sum())  # float sums of 0/1 over a chunk are exact
            if low == high:  # every entry inside equals `low`: their number per chunk is all we need
                found[row].append((start, inside.sum()))
            else:
                found[row].append((start, torch.masked_select(magnitudes, inside.to(torch.bool))))

    parts = for_each_chunk(base.numel(), count_and_gather)
    return [(int(sum(float(torch.stack(part["n_above"][row]).sum()) for part in parts)),
             [(begin, c) for part in parts for begin, c in part["candidates"][row]])
            for row in range(len(xs))]


def _threshold_in_window(base: torch.Tensor, x: torch.Tensor, rank: int, k: int, window: tuple[float, float],
                         n_above: int, chunks: list[tuple[int, torch.Tensor]]) -> _Threshold | None:
    """The threshold of one model from what the counting pass found in its window (by digits if the window missed
    `rank`); None when at most k entries are nonzero (all of them stay)."""
    low, high = window
    n = base.numel()
    n_inside = sum(int(c) for _, c in chunks) if low == high else sum(c.numel() for _, c in chunks)
    below = n - n_above - n_inside  # entries under the window
    if not below <= rank < below + n_inside:  # the prediction missed: count digits, then gather one digit
        return _threshold_by_digits(base, x, rank, k)
    if low == high:  # every entry inside is tied at `low`
        if low == 0:
            return None
        return _Threshold(low, *_spread_drops(((begin, int(c)) for begin, c in chunks), n_above + n_inside - k))
    found = value_at_rank(torch.cat([c for _, c in chunks]), rank - below)
    if found.value == 0:
        return None
    return _Threshold(found.value, *_tie_drops(chunks, found.value, n - (below + found.n_less) - k))


def _threshold_by_digits(base: torch.Tensor, x: torch.Tensor, rank: int, k: int) -> _Threshold | None:
    """The exact threshold without a prediction: a pass counting top digits of |δ|, then a pass gathering the
    entries of the digit that holds `rank`."""
    def count(start: int, stop: int, scratch: dict) -> None:
        counts = scratch.setdefault("counts", torch.zeros(2048, dtype=torch.int64))
        magnitudes = _abs_delta(x[start:stop], _f32(base[start:stop], scratch, "base32"), scratch)
        counts += torch.bincount(_top_digits(magnitudes, scratch), minlength=2048)

    cumulative = sum(part["counts"] for part in for_each_chunk(base.numel(), count)).cumsum(0)
    digit = int(torch.searchsorted(cumulative, rank, right=True))
    below = int(cumulative[digit - 1]) if digit > 0 else 0
    chunks = _gather(base, x, _bin_bounds(digit, digit))
    found = value_at_rank(torch.cat([c for _, c in chunks]), rank - below)
    if found.value == 0:  # at most k nonzero entries: all of them stay
        return None
    excess = base.numel() - (below + found.n_less) - k
    return _Threshold(found.value, *_tie_drops(chunks, found.value, excess))


def _in_range(magnitudes: torch.Tensor, low: float, high: float, scratch: dict) -> torch.Tensor:
    """The entries in [low, high), in flat order. Float 0/1 comparisons are several times cheaper than bool ones on
    the CPU; ≥ high implies ≥ low."""
    inside = torch.ge(magnitudes, low, out=buffer(scratch, "inside", magnitudes, torch.float32))
    inside.sub_(torch.ge(magnitudes, high, out=buffer(scratch, "above", magnitudes, torch.float32)))
    return torch.masked_select(magnitudes, inside.to(torch.bool))


def _gather(base: torch.Tensor, x: torch.Tensor, bounds: tuple[float, float]) -> list[tuple[int, torch.Tensor]]:
    def gather(start: int, stop: int, scratch: dict) -> None:
        magnitudes = _abs_delta(x[start:stop], _f32(base[start:stop], scratch, "base32"), scratch)
        scratch.setdefault("found", []).append((start, _in_range(magnitudes, *bounds, scratch)))

    return [item for part in for_each_chunk(base.numel(), gather) for item in part.get("found", [])]


def _tie_drops(chunks: list[tuple[int, torch.Tensor]], value: float, excess: int
               ) -> tuple[dict[int, int], set[int]]:
    """How many entries tied at `value` to drop in each chunk of candidates (by chunk start). Candidates keep flat
    order within a chunk, and chunks arrive in order, so counting them is enough (lazily: only until excess runs
    out)."""
    return _spread_drops(((start, int((candidates == value).sum())) for start, candidates in chunks), excess)


def _spread_drops(tied_counts: Iterable[tuple[int, int]], excess: int) -> tuple[dict[int, int], set[int]]:
    """Drop `excess` tied entries, the first ones in flat order first, given (chunk start, tied entries in it) in
    order: per chunk start how many to drop, and the chunks whose tied entries all go."""
    drops: dict[int, int] = {}
    whole: set[int] = set()
    for start, tied in tied_counts:
        if excess <= 0:
            break
        if tied:
            drops[start] = min(tied, excess)
            excess -= drops[start]
            if drops[start] == tied:
                whole.add(start)
    return drops, whole


def energies(base: torch.Tensor, tensors: list[torch.Tensor]) -> list[float]:
    """SCE's mean((x_i − base)²) per model without storing task vectors, from the same 8192-element block norms as
    sce.coefficients (chunks start at multiples of the block), so the fused and plain paths get the same coefficients
    whatever the chunking and threads."""
    base = base.reshape(-1)
    xs = [t.reshape(-1) for t in tensors]

    def accumulate(start: int, stop: int, scratch: dict) -> None:
        blocks = scratch.setdefault("energy", [[] for _ in xs])
        for i, x in enumerate(xs):
            part = x[start:stop]
            delta = torch.sub(_f32(part, scratch, "x32"), _f32(base[start:stop], scratch, "base32"),
                              out=buffer(scratch, "delta", part, torch.float32))
            blocks[i].append(blocked_norms(delta, 2))

    parts = for_each_chunk(base.numel(), accumulate)
    return [float(torch.cat([b for part in parts for b in part["energy"][i]]).double().square().sum()) / base.numel()
            for i in range(len(xs))]


def _keep_counts(densities: list[float] | None, n: int, models: int) -> list[int | None]:
    """Entries each model keeps: None = all (no pruning, or density ≥ 1), 0 = none (density ≤ 0), else
    max(1, int(density·n))."""
    if densities is None:
        return [None] * models
    return [None if d >= 1 else max(1, int(d * n)) if d > 0 else 0 for d in densities]


def _pruned_delta(x: torch.Tensor, base32: torch.Tensor, threshold: _Threshold | None, zeroed: bool, start: int,
                  target: torch.Tensor, scratch: dict) -> torch.Tensor:
    """One chunk of a model's task vector x − base in `target`, pruned at its threshold (zero when `zeroed`)."""
    if zeroed:
        return target.zero_()
    if threshold is None:
        return torch.sub(_f32(x, scratch, "x32"), base32, out=target)
    delta = torch.sub(_f32(x, scratch, "x32"), base32, out=buffer(scratch, "raw", base32))
    if start in threshold.whole:  # every tied entry of this chunk goes: keep |δ| > threshold
        return torch.hardshrink(delta, threshold.value, out=target)
    delta = torch.hardshrink(delta, threshold.shrink, out=target)
    # ties at the threshold beyond k: drop the first ones of this chunk
    surplus = threshold.drops.get(start, 0)
    if surplus:
        drop_ties_(delta, torch.abs(delta) == threshold.value, first=surplus)
    return delta


def fused_merge(
    base: torch.Tensor,
    tensors: list[torch.Tensor],
    weights: list[float],
    *,
    densities: list[float] | None,
    consensus: bool,
    normalize: bool,
    scale: float,
    coefficients: list[float] | None = None,
    min_divisor: float | None = None,
) -> torch.Tensor:
    """base + scale·(Σ_i [agree_i] w_i prune(x_i − base)) / divisor, in one combine pass (the disjoint mean of
    consensus.py when `consensus`, else a sum divided by Σ w_i when `normalize`). With `coefficients` (SCE) the
    task vectors are elected on unweighted, the kept ones weighted by their coefficient, and the divisor (Σ of the
    agreeing coefficients) is clamped at `min_divisor`."""
    shape = base.shape
    base = base.reshape(-1)
    xs = [t.reshape(-1) for t in tensors]
    keep_counts = _keep_counts(densities, base.numel(), len(xs))
    thresholds = _thresholds(base, xs, [k if k else None for k in keep_counts])
    zeroed = [k == 0 for k in keep_counts]  # density 0: the model contributes nothing
    divisor_weights = coefficients if coefficients is not None else weights
    total_weight = sum(weights)
    out = _output_for(base, xs)

    def combine(start: int, stop: int, scratch: dict) -> None:
        base_part = _f32(base[start:stop], scratch, "base32")
        deltas = []
        for i, x in enumerate(xs):
            delta = _pruned_delta(x[start:stop], base_part, thresholds[i], zeroed[i], start,
                                  buffer(scratch, f"delta{i}", base_part), scratch)
            if weights[i] != 1:
                delta.mul_(weights[i])
            deltas.append(delta)
        if consensus:
            mixed = disjoint_mean_into(deltas, divisor_weights, coefficients, scratch, normalize=normalize,
                                       min_divisor=min_divisor)
        else:
            mixed = deltas[0]  # this chunk's own scratch: summed into in place (the same sum, one copy fewer)
            for delta in deltas[1:]:
                mixed.add_(delta)
            if normalize:
                mixed.div_(weight_sum_divisor(total_weight))
        torch.add(base_part, mixed, alpha=scale, out=out[start:stop])

    for_each_chunk(base.numel(), combine)
    return out.view(shape)
