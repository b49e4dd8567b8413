"""Linear (weighted average of whole models; the base is not special)."""

from __future__ import annotations

import torch

from merging.errors import RecipeError
from merging.methods import params as P
from merging.methods.common import as_float32
from merging.methods.registry import SAME_IN_MERGEKIT, Method, Param, register

WEIGHT = P.weight(help="This model's share of the average.", ui_range=(0.0, 2.0))
NORMALIZE = Param(name="normalize", scope="global", default=True, kind="bool",
                  help="Divide by the total weight (a true average).")


def linear(
    base: torch.Tensor | None, tensors: list[torch.Tensor], model_params: list[dict], params: dict,
    generator: torch.Generator | None,
) -> torch.Tensor:
    weights = [float(m["weight"]) for m in model_params]
    result = torch.zeros_like(as_float32(tensors[0]))
    for tensor, weight in zip(tensors, weights):
        result.add_(as_float32(tensor), alpha=weight)
    if params.get("normalize", True):
        total = sum(weights)
        if total == 0:
            raise RecipeError("linear: the weights add up to 0 for this tensor; give at least one model a weight ≠ 0")
        result.div_(total)
    return result


register(
    Method(
        name="linear", family="linear", explanation="Weighted average of the models' weights.",
        formula="out = Σ_i w_i x_i / Σ_i w_i", params=(WEIGHT, NORMALIZE), base="ignored", random=False,
        min_models=1, max_models=None, fn=linear, mergekit=SAME_IN_MERGEKIT,
    )
)
