"""In-memory merging for small models: task vectors are computed once, then every recipe (a slider move, a sweep
point, a learned coefficient set) is merged straight into a state dict.

Results match the streaming engine tensor for tensor: the same method functions, the same per-tensor parameter
resolution, and the same per-tensor random generator (seeded from `zlib.crc32(f"{seed}:{name}")`). Methods with a
delta form (the task-arithmetic family) reuse the cached float32 task vectors; the others get the models' tensors.
Only tensors that every input has (same shape) are merged; the rest (per-task classifier heads) are left out and
listed in `unmerged_names`.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping

import torch

from merging.checks import require_finite
from merging.errors import RecipeError
from merging.methods.registry import collect_notes, get_method
from merging.recipe import ParameterResolver, Recipe, validate_recipe

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def tensor_generator(seed: int, name: str) -> torch.Generator:
    """The generator a random method gets for one tensor (the engine seeds the same way)."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()))


class LiveMerger:
    """Caches float32 task vectors of `models` against `base` once; `merge(recipe, seed)` returns a merged state
    dict. The recipe's `model` strings are keys of `models`; the base's key is `recipe.base_model`."""

    def __init__(self, base: Mapping[str, torch.Tensor], models: Mapping[str, Mapping[str, torch.Tensor]],
                 num_layers: int, names: Iterable[str] | None = None) -> None:
        self.num_layers = num_layers
        wanted = list(names) if names is not None else list(base)
        self.names: list[str] = [
            n for n in wanted
            if n in base and base[n].is_floating_point()
            and all(n in m and m[n].shape == base[n].shape for m in models.values())
        ]
        everything = set(base).union(*(set(m) for m in models.values()))
        self.unmerged_names: list[str] = sorted(everything - set(self.names))
        self.base: dict[str, torch.Tensor] = {n: base[n].float().contiguous() for n in self.names}
        # Keep the models' own tensors (no copy when already float32) so interpolation methods and linear see
        # x_i exactly rather than base + (x_i − base) with its rounding.
        self.models: dict[str, dict[str, torch.Tensor]] = {
            key: {n: m[n].float() for n in self.names} for key, m in models.items()
        }
        self.task_vectors: dict[str, dict[str, torch.Tensor]] = {
            key: {n: weights[n] - self.base[n] for n in self.names} for key, weights in self.models.items()
        }
        self.notes: list[str] = []  # the last merge's per-tensor notes ("name: message")

    def _inputs(self, recipe: Recipe) -> list[str]:
        inputs = recipe.merge_inputs()
        known = set(self.models) | ({recipe.base_model} if recipe.base_model else set())
        missing = [m for m in inputs if m not in known]
        if missing:
            raise RecipeError(f"the recipe names model(s) {', '.join(map(repr, missing))} that are not loaded here; "
                              f"use one of {', '.join(map(repr, self.models))}")
        return inputs

    def _weights(self, key: str, base_key: str | None) -> dict[str, torch.Tensor]:
        return self.base if key not in self.models and key == base_key else self.models[key]

    def merge(self, recipe: Recipe, seed: int = 0) -> dict[str, torch.Tensor]:
        """The merged state dict (float32, or the recipe's out_dtype), for the tensors all inputs share."""
        validate_recipe(recipe)
        method = get_method(recipe.merge_method)
        inputs = self._inputs(recipe)
        resolve = ParameterResolver(recipe, self.num_layers)
        out_dtype = _DTYPES.get(recipe.out_dtype or "", torch.float32)
        use_deltas = method.fn_deltas is not None and method.base != "ignored"
        if use_deltas:
            sources = [self.task_vectors[key] for key in inputs]
        else:
            sources = [self._weights(key, recipe.base_model) for key in inputs]
        pass_base = method.base == "required" or (method.base == "optional" and recipe.base_model is not None)
        merged: dict[str, torch.Tensor] = {}
        notes: list[str] = []
        for name in self.names:
            model_params, params = resolve(name)
            generator = tensor_generator(seed, name) if method.random else None
            with collect_notes() as tensor_notes:
                if use_deltas:
                    deltas = [src[name] for src in sources]
                    result = method.fn_deltas(deltas, model_params, params, generator).add_(self.base[name])
                else:
                    tensors = [src[name] for src in sources]
                    base = self.base[name] if pass_base else None
                    result = method.fn(base, tensors, model_params, params, generator)
            notes += [f"{name}: {message}" for message in tensor_notes]
            require_finite(name, result, recipe, out_dtype)  # a NaN/inf merge is refused, not returned
            merged[name] = result if result.dtype == out_dtype else result.to(out_dtype)
        self.notes = notes
        return merged
