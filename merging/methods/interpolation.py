"""Spherical and nearest-value interpolation: slerp, nuslerp, multislerp, karcher, nearswap (mergekit 0.1.5)."""

from __future__ import annotations

import math

import torch

from merging.cancel import check_cancelled
from merging.errors import RecipeError
from merging.methods import params as P
from merging.methods.common import as_float32
from merging.methods.params import MAGNITUDE
from merging.methods.registry import SAME_IN_MERGEKIT, Method, Param, register

T_SLERP = Param(name="t", scope="global", default=None, low=0.0, high=1.0, kind="float",
                help="Position between the base (0) and the other model (1).", required=True)
T_NEARSWAP = Param(name="t", scope="global", default=None, low=0.0, high=MAGNITUDE, kind="float",
                   help="Distance below which entries take the other model's value (larger = more of it).",
                   required=True, ui_range=(0.0, 0.01))
WEIGHT = P.weight(help="This model's share of the interpolation.", ui_range=(0.0, 1.0))
MAX_ITER = Param(name="max_iter", scope="global", default=10, low=1, high=1000, kind="int",
                 help="Iterations of the fixed-point search (at most 1000: each one passes over every model).",
                 ui_range=(1, 50))
TOL = Param(name="tol", scope="global", default=1e-5, low=1e-12, high=1e-2, kind="float",
            help="Stop when the update is smaller than this; also the norm below which a model counts as zero.",
            role="tolerance")
EPS = Param(name="eps", scope="global", default=1e-8, low=1e-12, high=1e-2, kind="float",
            help="Numerical floor for norms.", role="tolerance")
DOT_THRESHOLD = 0.9995  # |cos| above this: the vectors are (anti)parallel, interpolate linearly


def slerp_vectors(t: float, v0: torch.Tensor, v1: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Spherical interpolation treating each whole tensor as one vector; linear when nearly (anti)parallel."""
    a, b = as_float32(v0), as_float32(v1)
    norm_a = float(torch.linalg.vector_norm(a))
    norm_b = float(torch.linalg.vector_norm(b))
    norm_a = norm_a if norm_a > eps else 1.0
    norm_b = norm_b if norm_b > eps else 1.0
    dot = max(-1.0, min(1.0, float(torch.sum((a / norm_a) * (b / norm_b)))))
    if abs(dot) > DOT_THRESHOLD:
        coef_a, coef_b = 1 - t, t
    else:
        theta = math.acos(dot)
        coef_a = math.sin((1 - t) * theta) / math.sin(theta)
        coef_b = math.sin(t * theta) / math.sin(theta)
    return torch.add(a * coef_a, b, alpha=coef_b)


def slerp(base, tensors, model_params, params, generator) -> torch.Tensor:
    return slerp_vectors(float(params["t"]), base, tensors[0])


def nuslerp_vectors(t: float, v0: torch.Tensor, v1: torch.Tensor, *, dim: int, flatten: bool,
                    eps: float = 1e-8) -> torch.Tensor:
    """Slerp per vector along `dim` (or of the flattened tensors), linear where the pair is collinear."""
    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif dim != -1:
        v0, v1 = v0.transpose(dim, -1), v1.transpose(dim, -1)
    unit0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=1e-7)
    unit1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = torch.sum(unit0 * unit1, dim=-1, keepdim=True).clamp(-1, 1)
    collinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(collinear, 0, cos))
    spherical = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / torch.sin(theta)
    result = torch.where(collinear, (1 - t) * v0 + t * v1, spherical)
    if dim != -1 and not flatten:
        result = result.transpose(dim, -1)
    return result.reshape(shape)


def nuslerp(base, tensors, model_params, params, generator) -> torch.Tensor:
    w0, w1 = (float(m["weight"]) for m in model_params)
    t = 0.5 if abs(w0 + w1) < 1e-6 else w1 / (w0 + w1)
    dim = 0 if params.get("nuslerp_row_wise", False) else -1
    flatten = params.get("nuslerp_flatten", True)
    x0, x1 = as_float32(tensors[0]), as_float32(tensors[1])
    if base is None:
        return nuslerp_vectors(t, x0, x1, dim=dim, flatten=flatten)
    base = as_float32(base)
    return base + nuslerp_vectors(t, x0 - base, x1 - base, dim=dim, flatten=flatten)


def multislerp(base, tensors, model_params, params, generator) -> torch.Tensor:
    """Barycentric interpolation on the hypersphere: project onto the tangent space at the weighted mean
    direction, average there, map back, and scale to the weighted mean norm."""
    if len(tensors) == 1:
        return as_float32(tensors[0]).clone()
    eps = float(params.get("eps", 1e-8))
    stacked = torch.stack([as_float32(t) for t in tensors])
    if base is not None:
        stacked -= as_float32(base)
    flat = stacked.reshape(stacked.shape[0], -1)
    weights = torch.tensor([float(m["weight"]) for m in model_params], device=flat.device)
    if params.get("normalize_weights", True):
        weights = weights / weights.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * weights.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if len(tensors) != 2:
            raise RecipeError("multislerp: the weighted directions cancel out for a tensor; change the weights")
        result = (stacked[0] * weights[0] + stacked[1] * weights[1])
    else:
        mean = mean / mean_norm
        tangents = units - (units * mean).sum(-1, keepdim=True) * mean
        tangent = (tangents * weights.view(-1, 1)).sum(0)
        tangent_norm = torch.norm(tangent) + eps
        result = mean * torch.cos(tangent_norm) + tangent * (torch.sin(tangent_norm) / tangent_norm)
        result = (result * (norms.squeeze(-1) * weights).sum()).view(stacked.shape[1:])
    return result + as_float32(base) if base is not None else result


def karcher_mean(tensors: list[torch.Tensor], max_iter: int, tol: float) -> torch.Tensor:
    """Uniformly weighted Karcher (Riemannian) mean of the directions, scaled by the mean norm."""
    if len(tensors) == 1:
        return tensors[0].clone()
    alphas = [1.0 / len(tensors)] * len(tensors)
    norms = [float(torch.linalg.vector_norm(t)) for t in tensors]
    units = [t / n if n != 0 else torch.zeros_like(t) for t, n in zip(tensors, norms)]
    valid = [i for i, n in enumerate(norms) if n > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    total = sum(alphas[i] for i in valid)
    weights = [alphas[i] / total for i in valid]
    valid_units = [units[i] for i in valid]
    mean = sum(w * u for w, u in zip(weights, valid_units))
    mean_norm = float(torch.linalg.vector_norm(mean))
    mean = valid_units[0].clone() if mean_norm < tol else mean / mean_norm
    for _ in range(max_iter):
        check_cancelled()  # one tensor can take max_iter passes: a Cancel must not wait for them all
        tangent = torch.zeros_like(mean)
        for weight, unit in zip(weights, valid_units):
            dot = max(-1.0, min(1.0, float(torch.dot(mean.flatten(), unit.flatten()))))
            theta = math.acos(dot)
            if theta < tol:
                continue
            tangent += weight * (theta / math.sin(theta)) * (unit - dot * mean)
        tangent_norm = float(torch.linalg.vector_norm(tangent))
        if tangent_norm < tol:
            break
        mean = math.cos(tangent_norm) * mean + math.sin(tangent_norm) * (tangent / tangent_norm)
        unit_norm = float(torch.linalg.vector_norm(mean))
        if unit_norm > tol:
            mean = mean / unit_norm
    return sum(a * n for a, n in zip(alphas, norms)) * mean


def karcher(base, tensors, model_params, params, generator) -> torch.Tensor:
    return karcher_mean([as_float32(t) for t in tensors], int(params["max_iter"]), float(params["tol"]))


def nearswap(base, tensors, model_params, params, generator) -> torch.Tensor:
    a, b = as_float32(base), as_float32(tensors[0])
    weight = (float(params["t"]) / (a - b).abs().clamp(min=1e-6)).clamp(0, 1)
    return weight * b + (1 - weight) * a


register(Method(
    name="slerp", family="interpolation",
    explanation="Spherical interpolation between the base and one other model, tensor by tensor.",
    formula="θ = angle(base, x); out = sin((1−t)θ)/sinθ·base + sin(tθ)/sinθ·x  (linear if |cos θ| > 0.9995)",
    params=(T_SLERP,), base="required", random=False, min_models=1, max_models=1, fn=slerp,
    mergekit=SAME_IN_MERGEKIT,
))
register(Method(
    name="nuslerp", family="interpolation",
    explanation="Slerp of two models (or of their task vectors when a base is given) at t = w₂/(w₁+w₂).",
    formula="t = w₂/(w₁+w₂); out = base + slerp(t, x₁ − base, x₂ − base)",
    params=(
        WEIGHT,
        Param(name="nuslerp_row_wise", scope="global", default=False, kind="bool",
              help="Interpolate column vectors (dim 0)."),
        Param(name="nuslerp_flatten", scope="global", default=True, kind="bool", help="Treat each tensor as one vector."),
    ),
    base="optional", random=False, min_models=2, max_models=2, fn=nuslerp, mergekit=SAME_IN_MERGEKIT,
))
register(Method(
    name="multislerp", family="interpolation",
    explanation="Weighted spherical average of any number of models (task vectors when a base is given).",
    formula="average on the tangent space at the weighted mean direction, mapped back, times Σ w_i‖x_i‖",
    params=(
        WEIGHT,
        Param(name="normalize_weights", scope="global", default=True, kind="bool",
              help="Scale the weights to sum to 1."),
        EPS,
    ),
    base="optional", random=False, min_models=1, max_models=None, fn=multislerp, mergekit=SAME_IN_MERGEKIT,
))
register(Method(
    name="karcher", family="interpolation",
    explanation="Riemannian (Karcher) mean of all models' directions, scaled by their mean norm.",
    formula="argmin_m Σ_i d(m, x_i/‖x_i‖)² on the sphere, times mean ‖x_i‖",
    params=(MAX_ITER, TOL),
    base="ignored", random=False, min_models=1, max_models=None, fn=karcher, mergekit=SAME_IN_MERGEKIT,
))
register(Method(
    name="nearswap", family="interpolation",
    explanation="Take the other model's value where it is close to the base's, interpolate elsewhere.",
    formula="w = clamp(t / |base − x|, 0, 1); out = w·x + (1 − w)·base",
    params=(T_NEARSWAP,), base="required", random=False, min_models=1, max_models=1, fn=nearswap,
    mergekit=SAME_IN_MERGEKIT,
))
