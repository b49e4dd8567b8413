"""docs/adding-a-method.md, followed literally: the guide's task_median method registers, validates, merges in memory
(LiveMerger) and to a folder (the engine). If this test needs more than the guide says, the guide is wrong."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from merging.engine import merge_to_folder
from merging.errors import RecipeError
from merging.live import LiveMerger
from merging.methods import registry
from merging.methods.common import as_float32
from merging.methods.registry import Method, Param, register
from merging.recipe import load_recipe
from merging.sources import open_model
from tests.factory import make_family

# --- the guide's steps 1-3, as written there (registration in a function: the fixture below undoes it) ---------


def task_median(base, tensors, model_params, params, generator):
    base32 = as_float32(base)
    deltas = torch.stack([as_float32(t) - base32 for t in tensors])
    return base32 + float(params["lambda"]) * deltas.median(dim=0).values


LAMBDA = Param(
    name="lambda", scope="global", default=1.0, low=-100.0, high=100.0, kind="float",
    help="Scale of the median task vector.", ui_range=(0.0, 2.0),
)


def _register_the_guides_method() -> None:
    register(Method(
        name="task_median", family="task_median",
        explanation="Add the element-wise median of the task vectors to the base (robust to one outlier model).",
        formula="out = base + λ·median_i(x_i − base)",
        params=(LAMBDA,), base="required", random=False, min_models=1, max_models=None, fn=task_median,
    ))


# --- the guide's step 4 ------------------------------------------------------------------------------------------


@pytest.fixture
def guide_method(monkeypatch):
    """Register into a copy of the registry, so the method is gone again for the other tests."""
    registry.list_methods()
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    _register_the_guides_method()
    return registry.get_method("task_median")


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("guide") / "f", n_experts=3, layers=1)


def _recipe(family, lam) -> str:
    models = "".join(f"  - model: {expert}\n" for expert in family.experts)
    return f"merge_method: task_median\nbase_model: {family.base}\nmodels:\n{models}parameters:\n  lambda: {lam}\n"


def _read(folder) -> dict[str, torch.Tensor]:
    with open_model(folder) as source:
        return {name: source.get(name) for name in source.tensor_names()}


def test_the_guides_method_registers_and_validates(guide_method, family):
    assert guide_method in registry.list_methods()
    assert load_recipe(_recipe(family, 0.8)).merge_method == "task_median"
    with pytest.raises(RecipeError, match=r"lambda = 1000 is outside \[-100, 100\]"):
        load_recipe(_recipe(family, 1000))


def test_the_guides_method_merges_in_memory_and_to_a_folder(guide_method, family, tmp_path):
    base, experts = _read(family.base), {str(e): _read(e) for e in family.experts}
    recipe = load_recipe(_recipe(family, 0.8))
    expected = {name: w + 0.8 * torch.stack([experts[str(e)][name] - w for e in family.experts]).median(0).values
                for name, w in base.items()}

    live = LiveMerger(base, experts, num_layers=1).merge(recipe)
    assert set(live) == set(base)
    for name in base:
        torch.testing.assert_close(live[name], expected[name], rtol=0, atol=0)

    result = merge_to_folder(recipe, tmp_path / "merged")
    written = {k: v for shard in result.out_dir.glob("*.safetensors") for k, v in load_file(shard).items()}
    assert set(written) == set(base)
    for name in base:
        assert torch.equal(written[name], expected[name].to(written[name].dtype)), name
