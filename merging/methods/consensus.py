"""TIES sign election and the disjoint mean: the one kernel both the plain path (chunk by chunk over task vectors the
caller owns) and the fused path (chunk by chunk over task vectors it recomputes) use."""

from __future__ import annotations

import torch

from merging.methods.chunks import buffer, for_each_chunk, whole_tensor


def elect_sign_into(parts: list[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """TIES sign election: sign(Σ parts) with a zero sum electing +1, written into `out` (no temporaries)."""
    if len(parts) > 1:
        torch.add(parts[0], parts[1], out=out)
    else:
        out.copy_(parts[0])
    for part in parts[2:]:
        out.add_(part)
    return out.sign_().add_(0.5).sign_()  # −1, 0, +1 → −1, +1, +1


def weight_sum_divisor(total: float) -> float:
    """What `normalize` divides a plain weighted sum by: the total weight, or 1 when it is (nearly) 0 (mergekit)."""
    return total if abs(total) >= 1e-8 else 1.0


def disjoint_mean_into(
    parts: list[torch.Tensor],
    divisor_weights: list[float],
    scales: list[float] | None,
    scratch: dict,
    *,
    normalize: bool,
    min_divisor: float | None = None,
) -> torch.Tensor:
    """One chunk of the disjoint mean. Per entry: elect s = sign(Σ_i part_i) (a zero sum elects +); keep part_i where
    sign part_i = s (zeros never agree); mixed = Σ_i kept_i·scale_i, divisor = Σ_i agree_i·w_i. If normalize:
    mixed /= divisor, with a zero divisor replaced by 1 (TIES) or, given min_divisor, the divisor clamped below (SCE).
    Returns mixed, the chunk buffer "mixed" of `scratch` (the parts are not modified)."""
    like = parts[0]
    sign = elect_sign_into(parts, buffer(scratch, "sign", like))
    agree = buffer(scratch, "agree", like)
    mixed = buffer(scratch, "mixed", like)
    divisor = buffer(scratch, "divisor", like)
    scales = scales or [1.0] * len(parts)
    for index, (part, weight, factor) in enumerate(zip(parts, divisor_weights, scales)):
        torch.sign(part, out=agree).eq_(sign)
        if index == 0:  # the first term is written, not added to zeros: same values, two passes fewer
            torch.mul(part, agree, out=mixed)
            if factor != 1:
                mixed.mul_(factor)
            torch.mul(agree, weight, out=divisor)
        else:
            mixed.addcmul_(part, agree, value=factor)
            divisor.add_(agree, alpha=weight)
    if normalize:
        if min_divisor is None:
            divisor.add_(torch.eq(divisor, 0, out=agree))  # 0 → 1
        else:
            divisor.clamp_(min=min_divisor)
        mixed.div_(divisor)
    return mixed


def consensus_merge_(
    deltas: list[torch.Tensor],
    divisor_weights: list[float],
    *,
    scales: list[float] | None = None,
    normalize: bool = True,
    min_divisor: float | None = None,
    scale: float = 1.0,
    base: torch.Tensor | None = None,
) -> torch.Tensor:
    """The disjoint mean (disjoint_mean_into) over whole task vectors, chunk by chunk. Returns base + scale·mixed
    (or the mixed delta without a base), written over deltas[0]."""
    flat = [delta.reshape(-1) for delta in deltas]
    base_flat = base.reshape(-1) if base is not None else None

    def step(start: int, stop: int, scratch: dict) -> None:
        parts = [delta[start:stop] for delta in flat]
        mixed = disjoint_mean_into(parts, divisor_weights, scales, scratch, normalize=normalize,
                                   min_divisor=min_divisor)
        if scale != 1:
            mixed.mul_(scale)
        if base_flat is not None:
            torch.add(base_flat[start:stop], mixed, out=parts[0])
        else:
            parts[0].copy_(mixed)

    for_each_chunk(flat[0].numel(), step, whole=whole_tensor(flat[0]))
    return deltas[0]
