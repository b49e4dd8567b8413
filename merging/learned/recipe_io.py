"""Learned coefficients as a recipe like any other.

The recipe is mergekit's `task_arithmetic` (θ0 + Σ_t w_t · τ_t, lambda 1, no normalisation) where each expert's
`weight` is a list of `{filter, value}` entries, one per merged tensor with its exact name. mergekit (0.1.5) and
merging.recipe take the first entry whose filter is a *substring* of the tensor name, so the entries are written
longest name first: then the first filter contained in a learned tensor's name is that name itself (a shorter name
can be contained in a longer one, never the reverse). A final entry without filter gives weight 0 (the base value)
to any tensor that was not learned. A task-wise λ is one scalar weight per expert.

Beside the recipe: coefficients.safetensors (one (P,) or scalar tensor per task, tensor names in the metadata) and
learned.json (method, settings, tensor names, loss curve).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from merging.errors import MergeLabError

RECIPE_FILE = "recipe.yaml"
COEFFICIENTS_FILE = "coefficients.safetensors"
INFO_FILE = "learned.json"


def weight_setting(names: Sequence[str], values: Sequence[float]) -> list[dict[str, Any]]:
    """Per-tensor weights as `{filter, value}` entries that substring-first-match resolves exactly."""
    order = sorted(range(len(names)), key=lambda j: (-len(names[j]), names[j]))
    entries: list[dict[str, Any]] = [{"filter": names[j], "value": float(values[j])} for j in order]
    entries.append({"value": 0.0})
    return entries


def recipe_dict(base: str, experts: Sequence[str], names: Sequence[str], coefficients: torch.Tensor) -> dict:
    """A task_arithmetic recipe (plain dict, mergekit's YAML schema) that rebuilds θ(λ)."""
    lam = coefficients.detach().double().cpu()
    models = []
    for t, expert in enumerate(experts):
        weight = float(lam[t]) if lam.dim() == 1 else weight_setting(names, lam[t].tolist())
        models.append({"model": str(expert), "parameters": {"weight": weight}})
    return {
        "merge_method": "task_arithmetic",
        "base_model": str(base),
        "models": models,
        "parameters": {"lambda": 1.0, "normalize": False},
        "dtype": "float32",
    }


def save_learned(
    out_dir: str | Path,
    *,
    base: str,
    experts: Mapping[str, str],
    names: Sequence[str],
    coefficients: torch.Tensor,
    info: Mapping[str, Any],
) -> Path:
    """Write recipe.yaml, coefficients.safetensors and learned.json into `out_dir`; returns the recipe path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = list(experts)
    recipe = recipe_dict(base, [experts[t] for t in tasks], names, coefficients)
    (out / RECIPE_FILE).write_text(
        "# Learned merging coefficients (MergeLab); mergekit reads this file as is.\n"
        + yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
    )
    lam = coefficients.detach().float().cpu()
    save_file({t: lam[i].reshape(-1).contiguous() for i, t in enumerate(tasks)}, str(out / COEFFICIENTS_FILE),
              metadata={"tasks": json.dumps(tasks), "tensor_names": json.dumps(list(names)),
                        "granularity": "layer" if lam.dim() == 2 else "task"})
    (out / INFO_FILE).write_text(json.dumps(
        {**info, "tasks": tasks, "experts": dict(experts), "base": base, "tensor_names": list(names)}, indent=1
    ))
    return out / RECIPE_FILE


def load_coefficients(out_dir: str | Path) -> tuple[list[str], list[str], torch.Tensor]:
    """(tasks, tensor names, λ) from a folder written by save_learned; λ is (T, P) or (T,)."""
    path = Path(out_dir) / COEFFICIENTS_FILE
    if not path.is_file():
        raise MergeLabError(f"{out_dir} holds no {COEFFICIENTS_FILE}: point at a folder written by `merging learn`")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tasks, names = json.loads(meta["tasks"]), json.loads(meta["tensor_names"])
    tensors = load_file(str(path))
    lam = torch.stack([tensors[t] for t in tasks])
    return tasks, names, lam[:, 0] if meta.get("granularity") == "task" else lam
