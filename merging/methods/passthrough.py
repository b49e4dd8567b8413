"""Passthrough: copy one model's tensors, optionally scaled (mergekit's building block for layer stacking)."""

from __future__ import annotations

import torch

from merging.methods.common import as_float32
from merging.methods.params import MAGNITUDE
from merging.methods.registry import SAME_IN_MERGEKIT, Method, Param, register


def passthrough(base, tensors, model_params, params, generator) -> torch.Tensor:
    scale = model_params[0].get("scale") if model_params else None
    tensor = as_float32(tensors[0])
    return tensor.clone() if scale is None else tensor * float(scale)


register(Method(
    name="passthrough", family="passthrough",
    explanation="Copy the one input model's weights unchanged (optionally scaled).",
    formula="out = scale · x",
    params=(Param(name="scale", scope="model", default=None, low=-MAGNITUDE, high=MAGNITUDE, kind="float",
                  help="Multiply the tensor by this (unset = copy as is).", ui_range=(0.0, 2.0), role="scale"),),
    base="ignored", random=False, min_models=1, max_models=1, fn=passthrough, mergekit=SAME_IN_MERGEKIT,
))
