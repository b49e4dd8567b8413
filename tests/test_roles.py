"""Declarations say everything once (issue 21.3): each parameter's role and each method's mergekit mapping live on the
declaration, coherent for every registered method, and the sweeps, the page and the export read them from there."""

from __future__ import annotations

import dataclasses

import pytest

from evaluation.axes import axis_choices, default_axes, sweepable
from evaluation.sweep import point_recipe
from merging.export import mergekit_export
from merging.methods import params as P
from merging.methods import registry
from merging.methods.registry import ROLES, Mergekit, get_method, list_methods
from merging.recipe import Recipe
from ui.workspace import has_own_control

SOURCES = ["math", "japanese"]


@pytest.mark.parametrize("method", list_methods(), ids=lambda m: m.name)
def test_every_method_s_params_have_coherent_roles(method):
    names = [p.name for p in method.params]
    assert len(names) == len(set(names)), f"{method.name} declares a parameter twice"
    for param in method.params:
        assert param.role is None or param.role in ROLES, (method.name, param.name)
        if param.name == "weight" or param.role == "weight":  # the one shared declaration, in the method's words
            assert dataclasses.replace(param, help=P.WEIGHT.help, ui_range=P.WEIGHT.ui_range) == P.WEIGHT, param
        if param.role == "kept_fraction":
            assert (param.kind, param.low, param.high) == ("float", 0.0, 1.0), param.name
        if param.role == "scale":
            assert param.kind == "float" and (param.low, param.high) == (-P.MAGNITUDE, P.MAGNITUDE), param.name
        if param.role == "tolerance":  # a floor or threshold: above 0 (RAM+ divides by its epsilon)
            assert param.kind == "float" and param.low > 0, param.name
        if param.role == "hidden":
            assert param.kind == "bool", param.name
        for ours, _theirs in param.mergekit_values:
            assert ours in param.choices, (param.name, ours)
    for role in ("weight", "kept_fraction", "scale", "hidden"):
        assert sum(p.role == role for p in method.params) <= 1, (method.name, role)


@pytest.mark.parametrize("method", [m for m in list_methods() if m.mergekit is not None], ids=lambda m: m.name)
def test_a_mergekit_mapping_sets_only_parameters_mergekit_s_method_has(method):
    """magnitude_prune → breadcrumbs with gamma 0: gamma is breadcrumbs' own parameter, inside its bounds."""
    target = get_method(method.mergekit_name())
    for name, value in method.mergekit.parameters:
        param = target.param(name)
        assert param is not None and param.low <= value <= param.high, (method.name, name)
        assert method.param(name) is None, (method.name, name)  # never overwrites one of the method's own settings


@pytest.mark.parametrize("method", list_methods(), ids=lambda m: m.name)
def test_a_method_s_weight_is_its_weight_role_found_once(method):
    assert method.weight is method.by_role("weight")
    changed = dataclasses.replace(method, params=tuple(p for p in method.params if p.role != "weight"))
    assert changed.weight is None  # a method made from another finds its own


def test_the_known_roles_are_where_the_readers_expect_them():
    assert get_method("ties").by_role("kept_fraction").name == "density"
    assert get_method("sce").by_role("kept_fraction").name == "select_topk"
    assert get_method("ties").by_role("scale").name == "lambda"
    assert [p.name for p in get_method("ramplus_tl").params if p.role == "tolerance"] == ["epsilon"]
    assert get_method("della").param("epsilon").role is None  # a keep-probability spread: a setting, sweepable
    assert get_method("linear").param("weight").ui_range == (0.0, 2.0)  # the shared weight, linear's slider


def test_sweep_axes_come_from_roles_not_names():
    assert "epsilon" not in axis_choices("ram", SOURCES) and axis_choices("ram", SOURCES) == []
    assert axis_choices("ramplus_tl", SOURCES) == ["r", "alpha"]
    assert "epsilon" in axis_choices("della", SOURCES)
    assert axis_choices("multislerp", SOURCES)[:3] == ["weight", "weight:math", "weight:japanese"]
    assert "eps" not in axis_choices("multislerp", SOURCES) and "tol" not in axis_choices("karcher", SOURCES)
    assert default_axes("ramplus_tl", {}, SOURCES) == ("r", None)
    assert default_axes("sce", {}, SOURCES) == ("select_topk", None)
    assert default_axes("dare_ties", {}, SOURCES) == ("weight", "density")


def test_a_new_tolerance_is_no_axis_and_a_new_fraction_is_the_density_axis(monkeypatch):
    """The readers follow a declaration's role whatever the parameter is called."""
    ram = get_method("ramplus_tl")
    renamed = dataclasses.replace(ram, params=tuple(
        dataclasses.replace(p, name="threshold") if p.name == "epsilon" else p for p in ram.params))
    monkeypatch.setitem(registry._METHODS, "ramplus_tl", renamed)
    assert "threshold" not in axis_choices("ramplus_tl", SOURCES)
    assert not sweepable(renamed.param("threshold"))
    ties = get_method("ties")
    kept = dataclasses.replace(ties, params=tuple(
        dataclasses.replace(p, name="keep") if p.name == "density" else p for p in ties.params))
    monkeypatch.setitem(registry._METHODS, "ties", kept)
    template = Recipe.from_dict({"merge_method": "ties", "base_model": "b",
                                 "models": [{"model": "m", "parameters": {"weight": 1.0, "keep": 0.9}}]})
    point = point_recipe(template, "ties", 0.4, 0.3)
    assert point.models[0].parameters == {"weight": 0.4, "keep": 0.3}


def test_the_page_hides_exactly_the_weight_and_hidden_roles():
    ties = get_method("ties")
    assert not has_own_control(ties.param("weight")) and not has_own_control(ties.param("int8_mask"))
    assert all(has_own_control(p) for p in ties.params if p.name not in ("weight", "int8_mask"))


def _recipe(method: str, **top) -> Recipe:
    return Recipe.from_dict({"merge_method": method, "base_model": "b",
                             "models": [{"model": "m", "parameters": {"weight": 1.0, "density": 0.5}}],
                             **({"parameters": top} if top else {})})


def test_export_reads_the_method_s_mergekit_mapping(monkeypatch):
    ties = get_method("ties")
    assert mergekit_export(_recipe("ties")).runs_in_mergekit
    monkeypatch.setitem(registry._METHODS, "ties", dataclasses.replace(
        ties, mergekit=Mergekit(name="breadcrumbs_ties", parameters=(("gamma", 0.0),), note="as breadcrumbs_ties")))
    export = mergekit_export(_recipe("ties", rescale=False))
    assert export.runs_in_mergekit and export.text.startswith("# MergeLab: as breadcrumbs_ties\n")
    data, notes = _recipe("ties").to_mergekit()
    assert data["merge_method"] == "breadcrumbs_ties" and data["parameters"] == {"gamma": 0.0}
    assert notes == ["as breadcrumbs_ties"]
    monkeypatch.setitem(registry._METHODS, "ties", dataclasses.replace(ties, mergekit=None))
    assert not mergekit_export(_recipe("ties")).runs_in_mergekit


def test_a_param_s_mergekit_values_are_rewritten_and_noted():
    data, notes = _recipe("dare_ties", rescale="inverse_density").to_mergekit()
    assert data["parameters"]["rescale"] is True
    assert notes == [("mergekit has no `rescale: inverse_density`; written as `rescale: true`, so mergekit's result "
                      "will differ")]
    assert _recipe("dare_ties", rescale=True).to_mergekit()[1] == []


def test_a_sweep_of_another_method_starts_from_the_merge_s_kept_fraction():
    """ties at density 0.3, then a sweep of sce: its select_topk starts at 0.3 (one setting, two names)."""
    from types import SimpleNamespace

    from merging.settings import MergeSettings
    from ui.evaluate_panel import sweep_base_settings

    current = MergeSettings("ties", [1.0, 0.5], {"density": 0.3, "lambda": 1.0}, 7)
    session = SimpleNamespace(merge_settings=current, sources=[object(), object()])
    settings = sweep_base_settings(session, "sce")
    assert settings["params"]["select_topk"] == 0.3 and "density" not in settings["params"]
    assert sweep_base_settings(session, "linear")["params"] == {"normalize": True}


def test_a_failed_merge_names_a_huge_weight_or_scale_by_its_role():
    """merging.checks words a non-finite merge's likely cause from the roles: a huge λ is named, a huge tolerance
    (not a multiplier) is not."""
    from types import SimpleNamespace

    from merging.checks import _likely_cause

    entry = SimpleNamespace(model="m", parameters={"weight": 1.0})
    huge_lambda = SimpleNamespace(merge_method="ties", parameters={"lambda": 1e5}, models=[entry])
    assert "`lambda: 100000`" in _likely_cause(huge_lambda)
    huge_threshold = SimpleNamespace(merge_method="ram", parameters={"epsilon": 1e5}, models=[entry])
    assert "huge" not in _likely_cause(huge_threshold)
