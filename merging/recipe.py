"""Typed merge recipes: mergekit YAML in (yaml.safe_load) and out, validation that reports every problem with its
fix, and per-tensor parameter resolution (gradients over layers, name filters, defaults).

Parameter values are kept as written: a scalar, a gradient list `[v0, ..., vn]`, a `{filter, value}` dict or a list of
them. `ParameterResolver` turns them into scalars for one tensor; build it once per merge and call it per tensor.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from merging.errors import RecipeError
from merging.methods.registry import Method, Param, get_method, list_methods

TOP_LEVEL_KEYS = ("merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "tokenizer_source",
                  "chat_template")
MODEL_KEYS = ("model", "parameters")
DTYPES = ("float32", "float16", "bfloat16", "float64")
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")


@dataclass
class ModelEntry:
    model: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recipe:
    merge_method: str
    models: list[ModelEntry]
    base_model: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    chat_template: str | None = None

    @classmethod
    def from_dict(cls, data: Any) -> Recipe:
        """Build a recipe from parsed YAML/JSON; raises RecipeError listing every structural problem."""
        recipe, problems = _parse(data)
        if problems:
            raise RecipeError(_format(problems))
        return recipe

    def to_dict(self) -> dict[str, Any]:
        """mergekit's layout; empty and unset fields left out."""
        out: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model:
            out["base_model"] = self.base_model
        out["models"] = [
            {"model": m.model, **({"parameters": dict(m.parameters)} if m.parameters else {})} for m in self.models
        ]
        if self.parameters:
            out["parameters"] = dict(self.parameters)
        for key in ("dtype", "out_dtype", "tokenizer_source", "chat_template"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, default_flow_style=None)

    def merge_inputs(self) -> list[str]:
        """The models passed to the method as `tensors`, in order (see DEVELOPERS.md). For methods that ignore the
        base (linear, passthrough), an unlisted base_model is appended as one more input, as mergekit does."""
        listed = [m.model for m in self.models]
        if _base_policy(self.merge_method) == "ignored":
            if self.base_model and self.base_model not in listed:
                listed.append(self.base_model)
            return listed
        return [m for m in listed if m != self.base_model]

    def model_settings(self, model: str) -> dict[str, Any]:
        """Per-model parameter settings as written (empty for an unlisted base)."""
        return next((m.parameters for m in self.models if m.model == model), {})


def _base_policy(method_name: str) -> str:
    try:
        return get_method(method_name).base
    except RecipeError:
        return "required"


def load_recipe(source: str | Path, *, validate: bool = True) -> Recipe:
    """Read a recipe from a YAML file path or YAML text (yaml.safe_load), and validate it unless asked not to."""
    text = str(source)
    if isinstance(source, Path) or ("\n" not in text and text.endswith((".yaml", ".yml"))):
        path = Path(source)
        if not path.is_file():
            raise RecipeError(f"recipe file {path} not found: check the path")
        text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise RecipeError(f"the recipe is not valid YAML ({error}); fix the syntax at the line shown") from None
    recipe, problems = _parse(data)
    if validate and recipe is not None:
        problems += _problems(recipe)
    if problems:
        raise RecipeError(_format(problems))
    return recipe


# --- validation -------------------------------------------------------------------------------------------------


def _recipe_error(problems: list[str]) -> RecipeError:
    if len(problems) == 1:
        error = RecipeError(f"recipe problem: {problems[0]}")
    else:
        error = RecipeError(f"the recipe has {len(problems)} problems:\n" + "\n".join(f"- {p}" for p in problems))
    error.problems = list(problems)  # type: ignore[attr-defined]
    return error


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


def _value_shape_problems(where: str, settings: dict) -> list[str]:
    problems = []
    for name, value in settings.items():
        if not _setting_is_well_formed(value):
            problems.append(
                f"{where}.{name}: {value!r} is not a value, a gradient list [v0, ..., vn] or a list of "
                "{filter: substring, value: v} entries"
            )
    return problems


def _setting_is_well_formed(value: Any, nested: bool = False) -> bool:
    if _is_scalar(value):
        return True
    if isinstance(value, dict):
        return (set(value) <= {"filter", "value"} and "value" in value
                and (value.get("filter") is None or isinstance(value["filter"], str))
                and _setting_is_well_formed(value["value"], True))
    if isinstance(value, list) and value:
        if all(_is_scalar(v) for v in value):
            return True
        return not nested and all(isinstance(v, dict) and _setting_is_well_formed(v, True) for v in value)
    return False


def _leaves(value: Any) -> list[Any]:
    """Every scalar a setting can produce at its extremes (gradient endpoints and points, filter values)."""
    if _is_scalar(value):
        return [value]
    if isinstance(value, dict):
        return _leaves(value.get("value"))
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return []


def _has_catch_all(value: Any) -> bool:
    """True when a setting yields a value for every tensor (no filter list that can miss)."""
    conditions = [value] if isinstance(value, dict) else value
    if isinstance(conditions, list) and conditions and isinstance(conditions[0], dict):
        return any(c.get("filter") in (None, "*") for c in conditions)
    return True


def _leaf_problem(where: str, param: Param, leaf: Any) -> str | None:
    if param.kind == "bool":
        return None if isinstance(leaf, bool) else f"{where} = {leaf!r} must be true or false"
    if param.kind == "choice":
        return None if leaf in param.choices else (
            f"{where} = {leaf!r} must be one of {', '.join(str(c).lower() for c in param.choices)}"
        )
    if isinstance(leaf, bool) or not isinstance(leaf, (int, float)):
        return f"{where} = {leaf!r} must be a number"
    if not math.isfinite(leaf):
        return f"{where} = {leaf!r} must be a finite number"
    low = -math.inf if param.low is None else param.low
    high = math.inf if param.high is None else param.high
    if not low <= leaf <= high:
        return f"{where} = {leaf!r} is outside [{_fmt(param.low)}, {_fmt(param.high)}]: {param.help[0].lower()}{param.help[1:]}"
    return None


def _fmt(bound: float | None) -> str:
    return "∞" if bound is None else f"{bound:g}"


def validate_recipe(recipe: Recipe) -> None:
    """Raise RecipeError listing every problem in the recipe and how to fix it; return None when it is usable."""
    problems = _problems(recipe)
    if problems:
        raise RecipeError(_format(problems))


def _problems(recipe: Recipe) -> list[str]:
    problems: list[str] = []
    try:
        method = get_method(recipe.merge_method)
    except RecipeError as error:
        method = None
        problems.append(str(error))
    for key in ("dtype", "out_dtype"):
        value = getattr(recipe, key)
        if value is not None and value not in DTYPES:
            problems.append(f"{key}: {value!r} is not a dtype; use one of {', '.join(DTYPES)}")
    listed = [m.model for m in recipe.models]
    for name in sorted({m for m in listed if listed.count(m) > 1}):
        problems.append(f"model {name!r} is listed twice: list each model once")
    if method is not None:
        problems += _method_problems(recipe, method)
    if problems:
        raise _recipe_error(problems)


def _method_problems(recipe: Recipe, method: Method) -> list[str]:
    problems: list[str] = []
    name = method.name
    if method.base == "required" and not recipe.base_model:
        problems.append(f"{name} needs a base_model (the model the others were fine-tuned from): add `base_model: ...`")
    inputs = recipe.merge_inputs()
    count_problem = _count_problem(method, recipe, len(inputs))
    if count_problem:
        problems.append(count_problem)
    known = {p.name: p for p in method.params}
    names = ", ".join(known) or "none"
    for key, value in recipe.parameters.items():
        param = known.get(key)
        if param is None:
            problems.append(f"parameters.{key}: {name} has no parameter {key!r}; its parameters are: {names}"
                            + _unknown_hint(name, key))
            continue
        problems += [p for leaf in _leaves(value) if (p := _leaf_problem(f"parameters.{key}", param, leaf))]
    for index, entry in enumerate(recipe.models):
        is_base = entry.model == recipe.base_model and method.base != "ignored"
        for key, value in entry.parameters.items():
            where = f"models[{index}].parameters.{key}"
            param = known.get(key)
            if param is None:
                if not is_base:
                    problems.append(f"{where}: {name} has no parameter {key!r}; its parameters are: {names}"
                                    + _unknown_hint(name, key))
                continue
            if param.scope == "global":
                problems.append(f"{where}: {key} applies to the whole merge; move it to the top-level `parameters`")
                continue
            problems += [p for leaf in _leaves(value) if (p := _leaf_problem(where, param, leaf))]
    for param in method.params:
        if not param.required:
            continue
        for model in inputs:
            own, shared = recipe.model_settings(model).get(param.name), recipe.parameters.get(param.name)
            if own is None and shared is None:
                problems.append(f"model {model!r} has no {param.name}: add `parameters: {{{param.name}: 1.0}}` to it "
                                f"or a global `{param.name}` under `parameters`")
            elif not any(s is not None and _has_catch_all(s) for s in (own, shared)):
                problems.append(f"model {model!r}: the {param.name} filters do not cover every tensor; add a "
                                f"`- value: ...` entry without `filter` as a fallback")
    if name == "linear" and recipe.parameters.get("normalize", True) is True:
        weights = [recipe.model_settings(m).get("weight", recipe.parameters.get("weight")) for m in inputs]
        if weights and all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights) and sum(weights) == 0:
            problems.append("linear: the weights add up to 0, so the average is undefined; give at least one model "
                            "a nonzero weight (or set normalize: false)")
    if name in ("della", "della_linear"):
        problems += _della_problems(recipe, inputs)
    return problems


def _count_problem(method: Method, recipe: Recipe, count: int) -> str | None:
    if method.name in ("slerp", "nearswap") and count != 1:
        return (f"{method.name} interpolates exactly two models, the base_model and one other; "
                f"this recipe has {count} model(s) besides the base: keep exactly one")
    low, high = method.min_models, method.max_models
    what = "models" if method.base == "ignored" else "models besides the base_model"
    if count < low:
        return f"{method.name} needs at least {low} {what}; this recipe has {count}: add more under `models`"
    if high is not None and count > high:
        return f"{method.name} takes at most {high} {what}; this recipe has {count}: remove some"
    return None


def _unknown_hint(method_name: str, key: str) -> str:
    if key == "density" and method_name == "task_arithmetic":
        return " (task_arithmetic never prunes: use magnitude_prune, ties or dare_linear to prune, or drop density)"
    return ""


def _della_problems(recipe: Recipe, inputs: list[str]) -> list[str]:
    problems = []
    for model in inputs:
        own = recipe.model_settings(model)
        densities = _leaves(own.get("density", recipe.parameters.get("density", 1.0)))
        epsilons = _leaves(own.get("epsilon", recipe.parameters.get("epsilon", 0.15)))
        for density in densities:
            for epsilon in epsilons:
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (density, epsilon)):
                    continue
                if density < 1 and not (0 < density - epsilon and density + epsilon < 1):
                    problems.append(
                        f"model {model!r}: della needs density ± epsilon inside (0, 1), got density {density:g} and "
                        f"epsilon {epsilon:g}; lower epsilon below {min(density, 1 - density):g} or move density "
                        "toward 0.5"
                    )
    return problems


# --- per-tensor parameter resolution -----------------------------------------------------------------------------


def layer_position(tensor_name: str, num_layers: int) -> float:
    """x in [0, 1] for gradients: j/(L−1) for layer j of L (1.0 for a single layer, as mergekit); tensors outside
    the layers (embeddings, final norm, heads) get 0."""
    match = _LAYER_INDEX.search(tensor_name)
    if match is None:
        return 0.0
    if num_layers <= 1:
        return 1.0
    return min(1.0, int(match.group(1)) / (num_layers - 1))


_MISSING = object()


def evaluate_setting(setting: Any, tensor_name: str, x: float) -> Any:
    """One setting's value for a tensor: scalar as is; gradient interpolated at x (non-numeric gradients step);
    filter lists: the first entry whose filter is absent, "*", or a substring of the name. _MISSING if none match."""
    if isinstance(setting, dict):
        setting = [setting]
    if _is_scalar(setting):
        return setting
    if not setting:
        return _MISSING
    if all(_is_scalar(v) for v in setting):
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in setting):
            return setting[int(x * (len(setting) - 1))]
        scaled = x * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        fraction = scaled - i0
        return (1 - fraction) * setting[i0] + fraction * setting[i1]
    for condition in setting:
        pattern = condition.get("filter")
        if pattern is None or pattern == "*" or (tensor_name and pattern in tensor_name):
            return evaluate_setting(condition["value"], tensor_name, x)
    return _MISSING


def _typed(param: Param, value: Any) -> Any:
    if param.kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if param.kind == "int" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    return value


class ParameterResolver:
    """Resolves a validated recipe's parameters per tensor name; build once per merge (no re-parsing per tensor)."""

    def __init__(self, recipe: Recipe, num_layers: int):
        self.method = get_method(recipe.merge_method)
        self.num_layers = num_layers
        self.inputs = recipe.merge_inputs()
        self._shared = dict(recipe.parameters)
        self._own = [dict(recipe.model_settings(m)) for m in self.inputs]
        self._global_params = [p for p in self.method.params if p.scope == "global"]
        self._model_params = [p for p in self.method.params if p.scope == "model"]

    def __call__(self, tensor_name: str) -> tuple[list[dict], dict]:
        x = layer_position(tensor_name, self.num_layers)
        shared = {p.name: self._value(p, (self._shared,), tensor_name, x, None) for p in self._global_params}
        per_model = [
            {p.name: self._value(p, (own, self._shared), tensor_name, x, model) for p in self._model_params}
            for model, own in zip(self.inputs, self._own)
        ]
        return per_model, shared

    @staticmethod
    def _value(param: Param, scopes: tuple[dict, ...], tensor_name: str, x: float, model: str | None) -> Any:
        for settings in scopes:
            if param.name in settings:
                value = evaluate_setting(settings[param.name], tensor_name, x)
                if value is not _MISSING:
                    return _typed(param, value)
        if param.required:
            where = f" for model {model!r}" if model else ""
            raise RecipeError(f"no {param.name}{where} at tensor {tensor_name!r}: add a value without `filter`")
        return param.default


def resolve_parameters(recipe: Recipe, tensor_name: str, num_layers: int) -> tuple[list[dict], dict]:
    """Scalars for one tensor: (one dict per merge input, in `recipe.merge_inputs()` order; the global dict).
    For many tensors build a ParameterResolver once instead."""
    return ParameterResolver(recipe, num_layers)(tensor_name)


def known_methods() -> list[str]:
    return [m.name for m in list_methods()]
