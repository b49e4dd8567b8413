"""docs/adding-a-method.md, followed literally: the page's Python blocks (steps 1-3) become a family module, the
module goes into the registry's `_FAMILY_MODULES` (step 3), and the method registers, validates, merges in memory
(LiveMerger) and to a folder (the engine) as step 4 says. If this needs more than the guide says, the guide is wrong.

The method's name is read from the guide, and the tests pass whether or not a reader has followed the guide for real
(the same name then registered by merging/methods/<name>.py): the page's copy stands in for it during the tests."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from merging.engine import merge_to_folder
from merging.errors import RecipeError
from merging.live import LiveMerger
from merging.methods import registry
from merging.recipe import load_recipe
from merging.sources import open_model
from tests.factory import make_family

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "adding-a-method.md"
MODULE = "guide_method_under_test"  # not merging.methods.<name>: a reader's real module keeps its own name


def guide_module_source() -> str:
    """Steps 1-3 of the guide as one module: every ```python block of the page, in order."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.DOTALL)
    assert len(blocks) >= 3, "the guide lost its code blocks"
    return "\n".join(blocks)


def guide_method_name() -> str:
    """The name the guide's `register(Method(name=...))` gives its example."""
    names = re.findall(r"register\(Method\(\s*name=\"(\w+)\"", guide_module_source())
    assert len(names) == 1, f"the guide should register one example method, found {names}"
    return names[0]


NAME = guide_method_name()


@pytest.fixture
def guide_method(monkeypatch, tmp_path):
    """The guide's module on the path and in `_FAMILY_MODULES`, loaded by a lookup into a copy of the registry (so
    the method is gone again for the other tests). A real method of the same name (the reader followed the guide)
    is left out of the copy, so the page's own code is what registers and runs."""
    registry.list_methods()  # the real families first (their modules stay imported)
    (tmp_path / f"{MODULE}.py").write_text(guide_module_source(), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_METHODS", {k: m for k, m in registry._METHODS.items() if m.name != NAME})
    monkeypatch.setattr(registry, "_FAMILY_MODULES", (*registry._FAMILY_MODULES, MODULE))
    monkeypatch.setattr(registry, "_loaded", False)
    method = registry.get_method(NAME)
    LOADED.append(method)
    yield method
    sys.modules.pop(MODULE, None)


LOADED: list[registry.Method] = []  # the guide's methods the fixture registered (for the last test)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("guide") / "f", n_experts=3, layers=1)


def _recipe(family, lam) -> str:
    models = "".join(f"  - model: {expert}\n" for expert in family.experts)
    return f"merge_method: {NAME}\nbase_model: {family.base}\nmodels:\n{models}parameters:\n  lambda: {lam}\n"


def _read(folder) -> dict[str, torch.Tensor]:
    with open_model(folder) as source:
        return {name: source.get(name) for name in source.tensor_names()}


def test_the_guides_method_registers_and_validates(guide_method, family):
    assert guide_method.name == NAME and guide_method.fn.__module__ == MODULE
    assert guide_method in registry.list_methods()
    assert load_recipe(_recipe(family, 0.8)).merge_method == NAME
    with pytest.raises(RecipeError, match=r"lambda = 1000 is outside \[-100, 100\]"):
        load_recipe(_recipe(family, 1000))


def test_the_guides_method_merges_in_memory_and_to_a_folder(guide_method, family, tmp_path):
    base, experts = _read(family.base), {str(e): _read(e) for e in family.experts}
    recipe = load_recipe(_recipe(family, 0.8))
    # the median worked out here, independently of the guide's code
    expected = {name: w + 0.8 * torch.stack([experts[str(e)][name] - w for e in family.experts]).median(0).values
                for name, w in base.items()}

    live = LiveMerger(base, experts, num_layers=1).merge(recipe)
    assert set(live) == set(base)
    for name in base:
        assert torch.equal(live[name], expected[name]), name

    result = merge_to_folder(recipe, tmp_path / "merged")
    written = {k: v for shard in result.out_dir.glob("*.safetensors") for k, v in load_file(shard).items()}
    assert set(written) == set(base)
    for name in base:
        assert torch.equal(written[name], expected[name].to(written[name].dtype)), name


def test_the_guides_method_exports_as_its_declaration_says(guide_method, family):
    """Step 4: the declaration's `mergekit=None` makes the export a labelled MergeLab recipe, not mergekit YAML."""
    from merging.export import mergekit_export

    export = mergekit_export(load_recipe(_recipe(family, 0.8)))
    assert guide_method.mergekit is None and not export.runs_in_mergekit
    assert f"mergekit 0.1.5 has no merge method '{NAME}'" in export.text
    assert load_recipe(export.text).merge_method == NAME


def test_the_method_is_gone_again_after_the_guide_tests():
    """After the fixture the registry is as before: the page's copy is gone; the name is unknown again, or, once a
    reader has followed the guide for real, it is their module's method."""
    try:
        real = registry.get_method(NAME)
    except RecipeError as error:
        assert f"unknown merge_method '{NAME}'" in str(error)
    else:
        assert real.fn.__module__ == f"merging.methods.{NAME}"
    assert all(registry._METHODS.get(NAME) is not method for method in LOADED)
