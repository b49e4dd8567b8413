"""Model Stock (mergekit 0.1.5): interpolate between the base and the fine-tunes' average by a ratio set by how
aligned the task vectors are."""

from __future__ import annotations

import torch

from merging.methods.common import as_float32
from merging.methods.registry import SAME_IN_MERGEKIT, Method, Param, register


def model_stock(base, tensors, model_params, params, generator) -> torch.Tensor:
    base = as_float32(base)
    shape = base.shape
    if params.get("filter_wise", False):  # one ratio per row (output filter)
        w0 = base.unsqueeze(0) if base.dim() == 1 else base
        ws = [as_float32(t).reshape(w0.shape) for t in tensors]
    else:
        w0 = base.reshape(-1)
        ws = [as_float32(t).reshape(-1) for t in tensors]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1:]:
            norms = (torch.norm(a, dim=-1) * torch.norm(b, dim=-1)).clamp(min=1e-6)
            cosines.append(((a * b).sum(dim=-1) / norms).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6  # no finite estimate: keep the base there
    t = torch.where(singular, 0.0, n * cos / torch.where(singular, 1.0, denominator))
    average = sum(ws) / n
    return (t * average + (1 - t) * w0).reshape(shape)


register(Method(
    name="model_stock", family="model_stock",
    explanation="Move from the base toward the fine-tunes' average by how much their task vectors agree.",
    formula="cosθ = mean pairwise cos(δ_i, δ_j); t = N cosθ / (1 + (N−1) cosθ); out = t·mean(x_i) + (1−t)·base",
    params=(Param(name="filter_wise", scope="global", default=False, kind="bool",
                  help="One ratio per row instead of per tensor."),),
    base="required", random=False, min_models=2, max_models=None, fn=model_stock, mergekit=SAME_IN_MERGEKIT,
))
