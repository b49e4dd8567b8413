"""Typed merge recipes: mergekit YAML in (yaml.safe_load) and out, validation that reports every problem with its
fix, and per-tensor parameter resolution (gradients over layers, name filters, defaults).

A parameter value ("setting") is kept as written: a scalar, a gradient list `[v0, ..., vn]`, a `{filter, value}`
dict, or a list of such dicts. Resolution follows mergekit 0.1.5 (config.evaluate_setting, plan.py):
- per-model settings first, then the top-level `parameters`, then the method's default;
- filter lists: the first entry whose filter is absent, "*", or a substring of the tensor name wins; when none
  matches, the next scope is asked;
- a numeric gradient is piecewise linear over x = j/(L−1) for layer j of L (x = 1 when L = 1); tensors outside the
  layers (embeddings, final norm, lm_head) use x = 0; non-numeric gradients step (values[int(x·(n−1))]).
`ParameterResolver` does this per tensor without re-reading the recipe; build it once per merge.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from merging.dtypes import DTYPES as DTYPE_TABLE
from merging.errors import RecipeError
from merging.methods.registry import Method, Param, get_method, list_methods
from merging.recipe_text import (
    MAX_LISTED_PROBLEMS,
    MAX_MODELS,
    MAX_PROBLEM_CHARS,
    MAX_QUOTED_CHARS,
    cut,
    is_file,
    parse_yaml,
    quote,
    read_recipe_text,
)

TOP_LEVEL_KEYS = ("merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "tokenizer_source",
                  "tokenizer", "chat_template")
MODEL_KEYS = ("model", "parameters")
DTYPES = tuple(DTYPE_TABLE)  # the names a recipe may give (merging.dtypes)
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)(?:\.|$)")

Setting = Any  # scalar | list[scalar] | {"filter", "value"} | list[{"filter", "value"}]


@dataclass
class ModelEntry:
    model: str
    parameters: dict[str, Setting] = field(default_factory=dict)


@dataclass
class Recipe:
    merge_method: str
    models: list[ModelEntry]
    base_model: str | None = None
    parameters: dict[str, Setting] = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    tokenizer: dict[str, Any] | None = None  # mergekit's `tokenizer:` block, kept as written
    chat_template: str | None = None
    # The registry's declaration of merge_method, resolved once when the recipe is made (None for an unknown name:
    # validation says so). The step, validation and merge_inputs read it; nothing looks the method up by name again.
    # To change the method, make a new recipe (dataclasses.replace resolves the new name).
    method: Method | None = field(default=None, repr=False, compare=False)
    # What validate_recipe last found valid (the recipe's fingerprint): validating it again, unchanged, is free, so
    # the page, LiveMerger and the engine's preflight can each ask without the merge being validated twice.
    _valid_as: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.method is None or self.method.name != self.merge_method:
            self.method = _registered(self.merge_method)

    @classmethod
    def checked(cls, **fields: Any) -> Recipe:
        """A recipe made from its fields and validated (RecipeError listing every problem and how to fix it): what
        a caller that builds a recipe to merge it needs, in one call."""
        recipe = cls(**fields)
        validate_recipe(recipe)
        return recipe

    @classmethod
    def from_dict(cls, data: Any) -> Recipe:
        """Build a recipe from parsed YAML/JSON; raises RecipeError listing every structural problem."""
        recipe, problems = _parse(data)
        if problems or recipe is None:
            raise _recipe_error(problems)
        return recipe

    def to_dict(self) -> dict[str, Any]:
        """mergekit's layout; unset fields left out."""
        out: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model:
            out["base_model"] = self.base_model
        out["models"] = [
            {"model": m.model, **({"parameters": dict(m.parameters)} if m.parameters else {})} for m in self.models
        ]
        if self.parameters:
            out["parameters"] = dict(self.parameters)
        for key in ("dtype", "out_dtype", "tokenizer_source", "tokenizer", "chat_template"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def renamed(self, names: Mapping[str, str]) -> Recipe:
        """The same recipe with its models (and base_model, a tokenizer_source naming a model) named by `names`
        (old → new; names not in it kept): a pure renaming, nothing parsed or validated again (names are only keys, so a valid recipe
        stays valid). Raises RecipeError when two models (the base included) would get one name: the same folder
        chosen twice."""
        new = [names.get(m.model, m.model) for m in self.models]
        old_names = {m.model for m in self.models} | {self.base_model} - {None}
        new_names = [names.get(n, n) for n in old_names]
        twice = sorted(n for n, count in Counter(new_names).items() if count > 1)
        if twice:
            raise RecipeError(f"model {quote(twice[0])} is chosen twice: choose each model once")

        tokenizer = self.tokenizer_source
        if tokenizer not in (None, "base", "union"):  # mergekit's keywords name no model
            tokenizer = names.get(tokenizer, tokenizer)
        base = None if self.base_model is None else names.get(self.base_model, self.base_model)
        out = replace(self, models=[ModelEntry(n, dict(m.parameters)) for n, m in zip(new, self.models)],
                      base_model=base, tokenizer_source=tokenizer, parameters=dict(self.parameters))
        if self._valid_as is not None and self._valid_as == _fingerprint(self):
            out._valid_as = _fingerprint(out)  # valid before, valid renamed: validation reads no model's name
        return out

    def to_yaml(self) -> str:
        """YAML that mergekit 0.1.5 accepts (numeric gradient lists in flow style, as mergekit writes them)."""
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True)

    def to_mergekit(self) -> tuple[dict[str, Any], list[str]]:
        """The recipe as mergekit 0.1.5 can run it, and a note for each thing that had to be rewritten or cannot be
        expressed there, as the method declares (`Method.mergekit`: magnitude_prune becomes breadcrumbs with gamma
        0; `Param.mergekit_values`: `rescale: inverse_density` becomes `true`). A method mergekit lacks is left as
        it is (merging.export labels it)."""
        data = self.to_dict()
        notes: list[str] = []
        method = self.method or get_method(self.merge_method)  # unknown: RecipeError listing the methods
        export = method.mergekit
        if export is not None and export.name not in (None, self.merge_method):
            data["merge_method"] = export.name
            notes.append(export.note or f"{self.merge_method} is written as mergekit's {export.name}")
        if export is not None and export.parameters:
            data["parameters"] = {**data.get("parameters", {}), **dict(export.parameters)}
        for param in method.params:
            for ours, theirs in param.mergekit_values:
                value = self.parameters.get(param.name)
                if type(value) is type(ours) and value == ours:
                    data["parameters"] = {**data["parameters"], param.name: theirs}
                    notes.append(f"mergekit has no `{param.name}: {ours}`; written as `{param.name}: "
                                 f"{yaml.safe_dump(theirs).splitlines()[0]}`, so mergekit's result will differ")
        return data, notes

    def to_mergekit_yaml(self) -> str:
        """to_mergekit() as YAML, its notes as comments on top."""
        data, notes = self.to_mergekit()
        header = "".join(f"# MergeLab: {n}\n" for n in notes)
        return header + yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)

    def merge_inputs(self) -> list[str]:
        """The models passed to the method as `tensors`, in order: the listed models other than the base; for
        methods that ignore the base (linear, passthrough) every listed model, plus an unlisted base_model appended
        last, as mergekit does."""
        listed = [m.model for m in self.models]
        if self.method is not None and self.method.base == "ignored":
            if self.base_model and self.base_model not in listed:
                listed.append(self.base_model)
            return listed
        return [m for m in listed if m != self.base_model]

    def merged_models(self) -> list[ModelEntry]:
        """Like merge_inputs(), as ModelEntry objects (an unlisted base gets an entry without parameters)."""
        by_name = {m.model: m for m in self.models}
        return [by_name.get(name) or ModelEntry(name) for name in self.merge_inputs()]

    def model_settings(self, model: str) -> dict[str, Setting]:
        """Per-model settings as written (empty for an unlisted base)."""
        return next((m.parameters for m in self.models if m.model == model), {})


    def uses_base(self) -> bool:
        """Whether the method is handed the base model's tensor as `base`: it does not ignore the base and the
        recipe names one (the engine reads it then, live merging passes it, the step expects it)."""
        return self.method is not None and self.method.base != "ignored" and self.base_model is not None


def _registered(name: str) -> Method | None:
    """The registry's method of this name; None when there is none."""
    try:
        return get_method(name)
    except RecipeError:
        return None


class _Dumper(yaml.SafeDumper):
    pass


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.SequenceNode:
    flow = bool(data) and all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


# --- reading ------------------------------------------------------------------------------------------------------


def load_recipe(source: str | Path, *, validate: bool = True) -> Recipe:
    """Read a recipe from a YAML file path or YAML text (yaml.safe_load) and validate it unless asked not to.
    Structural and semantic problems are reported together in one RecipeError."""
    text = str(source)
    where = "the recipe"
    # One line without ":" cannot be a usable recipe (that needs a mapping), so it is a file name.
    looks_like_path = "\n" not in text and (text.endswith((".yaml", ".yml")) or ":" not in text
                                            or is_file(Path(text)))
    if isinstance(source, Path) or looks_like_path:
        path = Path(source)
        text, where = read_recipe_text(path), f"recipe file {quote(str(path))}"
    data = parse_yaml(text, where)
    recipe, problems = _parse(data)
    if validate and recipe is not None:
        problems += _problems(recipe)
    if problems or recipe is None:
        raise _recipe_error(problems, where if where != "the recipe" else None)
    if validate:
        recipe._valid_as = _fingerprint(recipe)  # validated just now: a merge that asks again does not re-check
    return recipe


def _parse(data: Any) -> tuple[Recipe | None, list[str]]:
    """The recipe as far as it can be built, and every structural problem met on the way."""
    if not isinstance(data, Mapping):
        return None, [f"a recipe must be a mapping with at least merge_method and models, got {type(data).__name__}"]
    problems: list[str] = []
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            hint = " (slices are not supported yet: list whole models under `models`)" if key == "slices" else ""
            problems.append(f"unknown key {quote(key)}{hint}: the keys a recipe may have are "
                            f"{', '.join(TOP_LEVEL_KEYS)}")
    method = data.get("merge_method")
    if not isinstance(method, str) or not method:
        problems.append("merge_method is missing: add e.g. `merge_method: ties`")
        method = None
    models: list[ModelEntry] = []
    raw_models = data.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        problems.append("models is missing or empty: list the models to merge, e.g. `models: [{model: path/or/id}]`")
    elif len(raw_models) > MAX_MODELS:
        problems.append(f"models lists {len(raw_models)} models; a recipe may merge at most {MAX_MODELS}: "
                        "merge fewer at a time")
    else:
        for index, entry in enumerate(raw_models):
            parsed = _parse_model(entry, index, problems)
            if parsed is not None:
                models.append(parsed)
    parameters = _parse_settings(data.get("parameters"), "parameters", problems)
    strings: dict[str, str | None] = {}
    for key in ("base_model", "dtype", "out_dtype", "tokenizer_source", "chat_template"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            problems.append(f"{key} must be a string, got {quote(value)}")
            value = None
        strings[key] = value
    tokenizer = data.get("tokenizer")
    if tokenizer is not None and not isinstance(tokenizer, Mapping):
        problems.append("tokenizer must be a mapping (mergekit's tokenizer block: source, tokens, ...)")
        tokenizer = None
    if method is None:
        return None, problems
    recipe = Recipe(merge_method=method, models=models, parameters=parameters,
                    tokenizer=dict(tokenizer) if tokenizer else None, **strings)
    return recipe, problems


def _parse_model(entry: Any, index: int, problems: list[str]) -> ModelEntry | None:
    if isinstance(entry, str):
        return ModelEntry(entry)
    if not isinstance(entry, Mapping) or not isinstance(entry.get("model"), str):
        problems.append(f"models[{index}] must be a mapping with a `model:` path or Hub id, got {quote(entry)}")
        return None
    for key in entry:
        if key not in MODEL_KEYS:
            problems.append(f"models[{index}] ({quote(entry['model'])}): unknown key {quote(key)}; a model entry "
                            "has only "
                            f"{' and '.join(MODEL_KEYS)}")
    settings = _parse_settings(entry.get("parameters"), f"models[{index}].parameters", problems)
    return ModelEntry(entry["model"], settings)


def _parse_settings(raw: Any, where: str, problems: list[str]) -> dict[str, Setting]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(f"{where} must be a mapping of name: value, got {quote(raw)}")
        return {}
    for name, value in raw.items():
        if not _well_formed(value):
            problems.append(f"{where}.{cut(str(name), MAX_QUOTED_CHARS)}: {quote(value)} is not a value, a "
                            "gradient list [v0, ..., vn] or a list of {filter: substring, value: v} entries")
    return dict(raw)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (bool, int, float, str))


def _well_formed(value: Any, nested: bool = False) -> bool:
    if _is_scalar(value):
        return True
    if isinstance(value, Mapping):
        return (set(value) <= {"filter", "value"} and "value" in value
                and (value.get("filter") is None or isinstance(value["filter"], str))
                and _well_formed(value["value"], True))
    if isinstance(value, list) and value:
        if all(_is_scalar(v) for v in value):
            return True
        return not nested and all(isinstance(v, Mapping) and _well_formed(v, True) for v in value)
    return False


# --- values -------------------------------------------------------------------------------------------------------


def coerce(param: Param, value: Any) -> Any:
    """One scalar as the parameter's kind, with mergekit's (pydantic's) lax rules: YAML reads `1e-3` as a string,
    mergekit accepts it as a number, so do we. Raises ValueError with a readable reason."""
    if param.kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError("must be true or false")
    if param.kind == "choice":
        for choice in param.choices:
            if value == choice and type(value) is type(choice):
                return choice
        shown = ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in param.choices)
        raise ValueError(f"must be one of {shown}")
    if isinstance(value, bool):
        raise ValueError("must be a number")  # noqa: TRY004 (callers turn ValueError into the field's message)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("must be a number") from None
    except OverflowError:  # an integer beyond float range (a 400-digit weight)
        raise ValueError("is too large: must be a finite number of ordinary size") from None
    if not math.isfinite(number):
        raise ValueError("must be a finite number")
    if param.kind == "int":
        if number != int(number):
            raise ValueError("must be a whole number")
        return int(number)
    return number


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value)
    except (ValueError, OverflowError):  # not a number, or an integer beyond float range
        return None
    return None


_MISSING = object()


def evaluate_setting(setting: Setting, tensor_name: str, x: float) -> Any:
    """One setting's raw value for a tensor at layer position x: a scalar as is; a numeric gradient interpolated
    (numeric strings count as numbers), any other gradient stepped; a filter list's first matching entry. Returns
    the module's _MISSING sentinel when no filter matches (the caller then asks the next scope)."""
    if isinstance(setting, Mapping):
        setting = [setting]
    if _is_scalar(setting):
        return setting
    if not setting:
        return _MISSING
    if all(_is_scalar(v) for v in setting):
        numbers = [_number(v) for v in setting]
        if any(n is None for n in numbers):
            return setting[int(x * (len(setting) - 1))]
        scaled = x * (len(numbers) - 1)
        i0 = int(scaled)
        i1 = min(len(numbers) - 1, i0 + 1)
        fraction = scaled - i0
        return (1 - fraction) * numbers[i0] + fraction * numbers[i1]
    for condition in setting:
        pattern = condition.get("filter")
        if pattern is None or pattern == "*" or (tensor_name and pattern in tensor_name):
            return evaluate_setting(condition["value"], tensor_name, x)
    return _MISSING


def layer_position(tensor_name: str, num_layers: int) -> float:
    """x in [0, 1] for gradients: j/(L−1) for layer j of L (1.0 for a single layer, as mergekit); tensors outside
    the layers get 0."""
    match = _LAYER_INDEX.search(tensor_name)
    if match is None:
        return 0.0
    if num_layers <= 1:
        return 1.0
    return min(1.0, int(match.group(1)) / (num_layers - 1))


class ParameterResolver:
    """Resolves a recipe's parameters per tensor name; build once per merge, call per tensor.

    `ParameterResolver(recipe)(name, num_layers)` and `ParameterResolver(recipe, num_layers)(name)` both work.
    Returns (one dict per merge input in `recipe.merge_inputs()` order, the global dict), defaults filled.
    `method`, `inputs` (`recipe.merge_inputs()`) and `uses_base` (`recipe.uses_base()`) are read once here, for the
    step that calls it; `resolved` holds the answers for `names` (with num_layers), resolved here, up front. The
    recipe is validated first (RecipeError listing its problems): resolution reads only valid settings, and every
    merge (engine, live, the step's other callers) resolves through here. Free for a recipe validated before and
    unchanged since."""

    def __init__(self, recipe: Recipe, num_layers: int | None = None, names: Iterable[str] = ()) -> None:
        validate_recipe(recipe)
        self.method: Method = recipe.method  # valid: the method is registered
        self.num_layers = num_layers
        self.inputs = recipe.merge_inputs()
        self.uses_base = recipe.uses_base()
        self._shared = dict(recipe.parameters)
        self._own = [dict(recipe.model_settings(m)) for m in self.inputs]
        self._global_params = [p for p in self.method.params if p.scope == "global"]
        self._model_params = [p for p in self.method.params if p.scope == "model"]
        self.resolved: dict[str, tuple[list[dict], dict]] = {name: self(name) for name in names}

    def __call__(self, tensor_name: str, num_layers: int | None = None) -> tuple[list[dict], dict]:
        layers = num_layers if num_layers is not None else self.num_layers
        if layers is None:
            raise TypeError("ParameterResolver needs num_layers (in the constructor or the call)")
        x = layer_position(tensor_name, layers)
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
                    try:
                        return coerce(param, value)
                    except ValueError as error:
                        raise RecipeError(f"{param.name} = {quote(value)} at tensor {quote(tensor_name)} "
                                          f"{error}") from None
        if param.required:
            where = f" for model {quote(model)}" if model else ""
            raise RecipeError(f"no {param.name}{where} at tensor {quote(tensor_name)}: add a `- value: ...` entry "
                              "without `filter` as a fallback")
        return param.default


def resolve_parameters(recipe: Recipe, tensor_name: str, num_layers: int) -> tuple[list[dict], dict]:
    """Scalars for one tensor: (one dict per merge input, in `recipe.merge_inputs()` order; the global dict).
    For many tensors build a ParameterResolver once instead."""
    return ParameterResolver(recipe, num_layers)(tensor_name)


# --- validation ---------------------------------------------------------------------------------------------------


def validate_recipe(recipe: Recipe) -> None:
    """Raise RecipeError listing every problem in the recipe and how to fix it; return None when it is usable.
    The error's `problems` attribute holds the list. A recipe validated before and unchanged since is not checked
    again (the page validates what it builds; LiveMerger and the engine then ask again for free)."""
    fingerprint = _fingerprint(recipe)
    if getattr(recipe, "_valid_as", None) == fingerprint:
        return
    problems = _problems(recipe)
    if problems:
        raise _recipe_error(problems)
    recipe._valid_as = fingerprint


def _fingerprint(recipe: Recipe) -> str:
    """Everything validation reads of a recipe, as text: a changed setting changes it."""
    return repr(recipe.to_dict())


def _recipe_error(problems: list[str], where: str | None = None) -> RecipeError:
    """One error listing the problems: each cut to MAX_PROBLEM_CHARS, at most MAX_LISTED_PROBLEMS of them (the
    error's `problems` holds them all, cut). `where` names the file the recipe came from."""
    problems = [cut(p, MAX_PROBLEM_CHARS) for p in problems]
    if where is not None:
        error = RecipeError(f"{where}: " + (problems[0] if len(problems) == 1 else f"{len(problems)} problems:\n"
                                              + _listed(problems)))
    elif len(problems) == 1:
        error = RecipeError(f"recipe problem: {problems[0]}")
    else:
        error = RecipeError(f"the recipe has {len(problems)} problems:\n{_listed(problems)}")
    error.problems = problems  # type: ignore[attr-defined]
    return error


def _listed(problems: list[str]) -> str:
    shown = "\n".join(f"- {p}" for p in problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    if more > 0:
        shown += f"\n- …and {more} more (fix the ones above and check again)"
    return shown


def _problems(recipe: Recipe) -> list[str]:
    problems: list[str] = []
    method = recipe.method
    if method is None:
        known = ", ".join(m.name for m in list_methods())
        problems.append(f"unknown merge_method {quote(recipe.merge_method)}: use one of {known}")
    for key in ("dtype", "out_dtype"):
        value = getattr(recipe, key)
        if value is not None and value not in DTYPES:
            problems.append(f"{key}: {quote(value)} is not a supported dtype; use one of {', '.join(DTYPES)}")
    if recipe.tokenizer_source is not None and recipe.tokenizer is not None:
        problems.append("set either tokenizer_source or tokenizer, not both (mergekit refuses both)")
    counts = Counter(m.model for m in recipe.models)
    for name in sorted(m for m, n in counts.items() if n > 1):
        problems.append(f"model {quote(name)} is listed twice: list each model once")
    if not recipe.models:
        problems.append("models is empty: list at least one model")
    elif method is not None:
        problems += _method_problems(recipe, method)
    return problems


def _leaves(value: Setting) -> list[Any]:
    """Every scalar a setting can produce (gradient points, filter values)."""
    if _is_scalar(value):
        return [value]
    if isinstance(value, Mapping):
        return _leaves(value.get("value"))
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return []


def _has_catch_all(value: Setting) -> bool:
    """True when a setting yields a value for every tensor (no filter list that can miss)."""
    conditions = [value] if isinstance(value, Mapping) else value
    if isinstance(conditions, list) and conditions and isinstance(conditions[0], Mapping):
        return any(c.get("filter") in (None, "*") for c in conditions)
    return True


def _leaf_problem(where: str, param: Param, leaf: Any) -> str | None:
    try:
        value = coerce(param, leaf)
    except ValueError as error:
        return f"{where} = {quote(leaf)} {error}"
    if param.kind in ("float", "int"):
        low = -math.inf if param.low is None else param.low
        high = math.inf if param.high is None else param.high
        if not low <= value <= high:
            return (f"{where} = {quote(leaf)} is outside [{_fmt(param.low)}, {_fmt(param.high)}]: {param.help} "
                    "Use a value in that range")
    return None


def _fmt(bound: float | None) -> str:
    return "∞" if bound is None else f"{bound:g}"


def _method_problems(recipe: Recipe, method: Method) -> list[str]:
    problems: list[str] = []
    if method.base == "required" and not recipe.base_model:
        problems.append(f"{method.name} needs a base_model (the model the others were fine-tuned from): add "
                        "`base_model: ...`")
    inputs = recipe.merge_inputs()
    count_problem = _count_problem(method, len(inputs))
    if count_problem:
        problems.append(count_problem)
    declared = {p.name: p for p in method.params}  # the checks below look parameters up by name: built once
    problems += _global_parameter_problems(recipe, method, declared)
    problems += _model_parameter_problems(recipe, method, declared)
    problems += _required_parameter_problems(recipe, method, inputs)
    if method.name == "linear" and recipe.parameters.get("normalize", True) is True:
        problems += _zero_weight_problems(recipe, inputs)
    if "epsilon" in declared:
        problems += _della_problems(recipe, method, inputs, declared["epsilon"].default)
    return problems


def _unknown_parameter(method: Method, where: str, key: Any) -> str:
    names = ", ".join(dict.fromkeys(p.name for p in method.params)) or "none"
    return f"{where}: {method.name} has no parameter {quote(key)}; its parameters are: {names}" + \
        _unknown_hint(method.name, key)


def _global_parameter_problems(recipe: Recipe, method: Method, known: dict[str, Param]) -> list[str]:
    """The top-level `parameters`: known to the method (`known`: its parameters by name), every value (gradient
    point, filter value) in range."""
    problems: list[str] = []
    for key, value in recipe.parameters.items():
        param = known.get(key)
        if param is None:
            problems.append(_unknown_parameter(method, f"parameters.{cut(str(key), MAX_QUOTED_CHARS)}", key))
            continue
        problems += [p for leaf in _leaves(value) if (p := _leaf_problem(f"parameters.{key}", param, leaf))]
    return problems


def _model_parameter_problems(recipe: Recipe, method: Method, known: dict[str, Param]) -> list[str]:
    """Each model's `parameters`: known (`known`: the method's parameters by name), per model (not global), every
    value in range; the base's are ignored when the method uses a base, as mergekit does."""
    problems: list[str] = []
    for index, entry in enumerate(recipe.models):
        is_base = entry.model == recipe.base_model and method.base != "ignored"
        for key, value in entry.parameters.items():
            param = known.get(key)
            if param is None:
                if not is_base:  # mergekit ignores the base's parameters; so do we
                    unknown = f"models[{index}].parameters.{cut(str(key), MAX_QUOTED_CHARS)}"  # any text: cut
                    problems.append(_unknown_parameter(method, unknown, key))
                continue
            where = f"models[{index}].parameters.{key}"  # a declared name (short), as in the top-level check
            if param.scope == "global":
                problems.append(f"{where}: {key} applies to the whole merge; move it to the top-level `parameters`")
                continue
            problems += [p for leaf in _leaves(value) if (p := _leaf_problem(where, param, leaf))]
    return problems


def _required_parameter_problems(recipe: Recipe, method: Method, inputs: list[str]) -> list[str]:
    """Every merge input has each required parameter (its own or the global one) for every tensor."""
    problems: list[str] = []
    for param in method.params:
        if not param.required:
            continue
        for model in inputs:
            own, shared = recipe.model_settings(model).get(param.name), recipe.parameters.get(param.name)
            if own is None and shared is None:
                unlisted = model == recipe.base_model and model not in [m.model for m in recipe.models]
                problems.append(
                    f"base_model {quote(model)} is merged as one more input by {method.name} (as mergekit does) but "
                    f"has no {param.name}: list it under `models` with a {param.name}, or remove base_model"
                    if unlisted else
                    f"model {quote(model)} has no {param.name}: add `parameters: {{{param.name}: 1.0}}` to it or a "
                    f"global `{param.name}` under `parameters`")
            elif not any(s is not None and _has_catch_all(s) for s in (own, shared)):
                problems.append(f"model {quote(model)}: the {param.name} filters do not cover every tensor; add a "
                                f"`- value: ...` entry without `filter` as a fallback")
    return problems


def _zero_weight_problems(recipe: Recipe, inputs: list[str]) -> list[str]:
    """linear with normalize divides by the sum of the weights: it must not be 0."""
    weights = [_number(recipe.model_settings(m).get("weight", recipe.parameters.get("weight"))) for m in inputs]
    if weights and all(w is not None for w in weights) and abs(sum(weights)) < 1e-8:
        return [("linear: the weights add up to 0, so the average is undefined; give at least one model a nonzero "
                 "weight (or set normalize: false)")]
    return []


def _count_problem(method: Method, count: int) -> str | None:
    if method.name in ("slerp", "nearswap") and count != 1:
        return (f"{method.name} interpolates exactly two models, the base_model and one other; "
                f"this recipe has {count} model(s) besides the base: keep exactly one")
    low, high = method.min_models, method.max_models
    what = "models" if method.base == "ignored" else "models besides the base_model"
    if count < low:
        return f"{method.name} needs at least {low} {what}; this recipe has {count}: add more under `models`"
    if high is not None and count > high:
        exact = "exactly" if high == low else "at most"
        return f"{method.name} takes {exact} {high} {what}; this recipe has {count}: remove some"
    return None


def _unknown_hint(method_name: str, key: str) -> str:
    if key == "density" and method_name == "task_arithmetic":
        return " (task_arithmetic never prunes: use magnitude_prune, ties or dare_linear to prune, or drop density)"
    if key == "weight" and method_name == "sce":
        return " (sce computes its own coefficients from the task vectors; drop weight)"
    return ""


def _della_problems(recipe: Recipe, method: Method, inputs: list[str], epsilon_default: float) -> list[str]:
    problems = []
    for model in inputs:
        own = recipe.model_settings(model)
        densities = [_number(v) for v in _leaves(own.get("density", recipe.parameters.get("density", 1.0)))]
        epsilons = [_number(v) for v in _leaves(own.get("epsilon", recipe.parameters.get("epsilon", epsilon_default)))]
        for density in densities:
            for epsilon in epsilons:
                if density is None or epsilon is None or density >= 1 or density <= 0:
                    continue
                if not (0 < density - epsilon and density + epsilon < 1):
                    problems.append(
                        f"model {quote(model)}: {method.name} needs density ± epsilon inside (0, 1), got density "
                        f"{density:g} and epsilon {epsilon:g}; lower epsilon below {min(density, 1 - density):g} "
                        "or move density toward 0.5")
    return problems
