"""The method registry: keyword-only declarations, loud failures for a broken family list, and a sane, enforced
bound on every numeric parameter of every method (issue 9: karcher with max_iter 1e9 and tol 0 ran without end)."""

from __future__ import annotations

import math

import pytest
import yaml

from merging.errors import RecipeError
from merging.methods import registry
from merging.methods.params import MAGNITUDE
from merging.methods.registry import Param, get_method, list_methods
from merging.recipe import load_recipe

NUMERIC = ("float", "int")


def test_param_is_keyword_only():
    with pytest.raises(TypeError):
        Param("w", "model", 1.0, 0.0, 1.0, "float", "help")
    param = Param(name="w", scope="model", default=1.0, low=0.0, high=1.0, kind="float", help="help")
    assert (param.name, param.low, param.high, param.ui_range) == ("w", 0.0, 1.0, None)


def test_a_misspelt_family_module_fails_the_lookup_loudly(monkeypatch):
    list_methods()  # the real families are loaded (and stay cached as modules)
    monkeypatch.setattr(registry, "_FAMILY_MODULES", (*registry._FAMILY_MODULES, "merging.methods.no_such_family"))
    monkeypatch.setattr(registry, "_loaded", False)
    with pytest.raises(ModuleNotFoundError, match="no_such_family"):
        get_method("ties")
    with pytest.raises(ModuleNotFoundError):  # still failing on the next lookup, not half-loaded and quiet
        list_methods()


def _numeric_params():
    return [(method, param) for method in list_methods() for param in method.params if param.kind in NUMERIC]


@pytest.mark.parametrize("method, param", _numeric_params(), ids=lambda v: getattr(v, "name", ""))
def test_every_numeric_parameter_has_sane_finite_bounds(method, param):
    assert param.low is not None and param.high is not None, f"{method.name}.{param.name} is unbounded"
    assert math.isfinite(param.low) and math.isfinite(param.high) and param.low < param.high
    assert -MAGNITUDE <= param.low and param.high <= max(MAGNITUDE, 5000)
    if param.default is not None:
        assert param.low <= param.default <= param.high
    if param.ui_range is not None:
        assert param.low <= param.ui_range[0] < param.ui_range[1] <= param.high
    if param.kind == "int":
        assert param.high <= 5000  # an iteration count: bounded work
    if param.name in ("weight", "lambda", "scale"):
        assert (param.low, param.high) == (-MAGNITUDE, MAGNITUDE)
    if param.name in ("tol", "eps"):
        assert param.low > 0  # 0 never stops a fixed-point search / divides by zero


def test_bool_and_choice_parameters_have_no_numeric_bounds():
    others = [p for m in list_methods() for p in m.params if p.kind not in NUMERIC]
    assert others and all(p.low is None and p.high is None for p in others)


def _valid_recipe(method) -> dict:
    """The smallest recipe the method accepts: enough models, a base when it needs one, required values set."""
    count = method.min_models if method.max_models is None else method.max_models
    count = max(count, 2) if method.max_models is None else count
    models = [{"model": f"m{i}", "parameters": {}} for i in range(count)]
    shared: dict = {}
    for param in method.params:
        if param.required:
            value = param.ui_range[1] if param.ui_range else (param.low + param.high) / 2
            (shared if param.scope == "global" else models[0]["parameters"]).update({param.name: value})
            if param.scope == "model":
                for model in models[1:]:
                    model["parameters"][param.name] = value
    recipe = {"merge_method": method.name, "models": models, "parameters": shared}
    if method.base != "ignored":
        recipe["base_model"] = "base"
    return recipe


def _with(method, param, value) -> dict:
    recipe = _valid_recipe(method)
    target = recipe["parameters"] if param.scope == "global" else recipe["models"][0]["parameters"]
    target[param.name] = value
    return recipe


@pytest.mark.parametrize("method, param", _numeric_params(), ids=lambda v: getattr(v, "name", ""))
def test_validation_refuses_values_past_the_bounds_and_non_finite_ones(method, param):
    load_recipe(yaml.safe_dump(_valid_recipe(method)))  # the baseline is valid
    load_recipe(yaml.safe_dump(_with(method, param, param.high)))  # the bound itself is allowed
    span = param.high - param.low
    for value in (param.high + span, param.low - span):
        with pytest.raises(RecipeError, match=rf"{param.name} = .* is outside \["):
            load_recipe(yaml.safe_dump(_with(method, param, value)))
    for value in (float("nan"), float("inf")):
        with pytest.raises(RecipeError, match=rf"{param.name} = .*finite"):
            load_recipe(yaml.safe_dump(_with(method, param, value)))


def test_the_reported_unbounded_karcher_recipe_is_refused_with_the_bounds():
    text = ("merge_method: karcher\nmodels:\n  - model: a\n  - model: b\n"
            "parameters: {max_iter: 1000000000, tol: 0}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(text)
    message = str(info.value)
    assert "max_iter = 1000000000 is outside [1, 1000]" in message
    assert "tol = 0 is outside [1e-12, 0.01]" in message


def test_a_400_digit_weight_is_a_clean_message():
    text = ("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: " + "9" * 400 + "}\n"
            "  - model: b\n    parameters: {weight: 1}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(text)
    assert "weight" in str(info.value) and len(str(info.value)) < 500
