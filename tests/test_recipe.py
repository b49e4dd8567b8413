"""Recipes: mergekit YAML in and out, validation messages (one bad input per test), parameter resolution."""

from __future__ import annotations

import pytest
import yaml
from mergekit.config import MergeConfiguration
from mergekit.config import evaluate_setting as mergekit_evaluate

from merging.errors import RecipeError
from merging.recipe import (
    ModelEntry,
    ParameterResolver,
    Recipe,
    evaluate_setting,
    layer_position,
    load_recipe,
    resolve_parameters,
    validate_recipe,
)

TIES_WITH_GRADIENTS = """
merge_method: ties
base_model: org/base
models:
  - model: org/math
    parameters:
      weight: [0.2, 1.0]
      density: 0.5
  - model: org/japanese
    parameters:
      weight:
        - filter: mlp
          value: 0.7
        - value: 0.3
      density: 1e-1
  - model: org/base
parameters:
  lambda: 1.5
  normalize:
    - filter: self_attn
      value: false
    - value: true
dtype: float32
out_dtype: bfloat16
tokenizer_source: base
"""


def problems_of(text: str) -> str:
    with pytest.raises(RecipeError) as caught:
        load_recipe(text)
    return str(caught.value)


def test_yaml_round_trip_keeps_everything():
    recipe = load_recipe(TIES_WITH_GRADIENTS)
    again = load_recipe(recipe.to_yaml())
    assert again == recipe
    assert again.to_dict() == yaml.safe_load(TIES_WITH_GRADIENTS) | {"models": again.to_dict()["models"]}
    assert "weight: [0.2, 1.0]" in recipe.to_yaml()  # gradients in flow style, as mergekit writes them


@pytest.mark.parametrize("text", [
    TIES_WITH_GRADIENTS,
    "merge_method: linear\nmodels:\n- {model: a, parameters: {weight: 1}}\n- {model: b, parameters: {weight: 2}}\n",
    "merge_method: slerp\nbase_model: a\nmodels: [{model: a}, {model: b}]\nparameters: {t: [0, 0.5, 1]}\n",
    ("merge_method: dare_ties\nbase_model: a\nmodels: [{model: b, parameters: {weight: 1, density: 0.3}}]\n"
     "parameters: {rescale: false}\n"),
])
def test_written_yaml_is_accepted_by_mergekit(text):
    recipe = load_recipe(text)
    config = MergeConfiguration.model_validate(yaml.safe_load(recipe.to_yaml()))
    assert config.merge_method == recipe.merge_method
    assert [str(m.model.model.path) for m in config.models] == [m.model for m in recipe.models]


def test_mergekit_export_rewrites_what_mergekit_lacks():
    recipe = load_recipe("merge_method: magnitude_prune\nbase_model: a\nmodels: [{model: b, parameters: "
                         "{weight: 1, density: 0.3}}]\nparameters: {rescale: inverse_density}")
    text = recipe.to_mergekit_yaml()
    assert text.startswith("# MergeLab: magnitude_prune is written as breadcrumbs with gamma 0")
    assert "inverse_density" in text.splitlines()[1]  # the second note says rescale cannot be kept
    exported = load_recipe(text)
    assert exported.merge_method == "breadcrumbs" and exported.parameters == {"rescale": True, "gamma": 0.0}
    MergeConfiguration.model_validate(yaml.safe_load(text))
    plain = load_recipe(TIES_WITH_GRADIENTS)
    assert plain.to_mergekit() == (plain.to_dict(), [])


def test_recipe_file_path_is_read(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(TIES_WITH_GRADIENTS)
    assert load_recipe(path) == load_recipe(str(path)) == load_recipe(TIES_WITH_GRADIENTS)
    assert "not found" in problems_of(str(tmp_path / "missing.yaml"))
    other = tmp_path / "recipe.txt"
    other.write_text(TIES_WITH_GRADIENTS)
    assert load_recipe(str(other)) == load_recipe(path)


# --- validation: one bad input per test, each message says what to fix ---

def test_unknown_method_lists_the_known_ones():
    message = problems_of("merge_method: tiez\nbase_model: a\nmodels: [{model: b}]")
    assert "'tiez'" in message and "ties" in message and "linear" in message and "dare_linear" in message


def test_unknown_top_level_key():
    message = problems_of("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}]\nmodel_name: x")
    assert "unknown key 'model_name'" in message and "merge_method, base_model, models" in message


def test_unknown_model_parameter_names_the_known_ones():
    message = problems_of("merge_method: ties\nbase_model: a\nmodels: [{model: b, parameters: {weight: 1, "
                          "densty: 0.5}}]")
    assert "'densty'" in message and "density" in message and "models[0]" in message


def test_missing_weight():
    message = problems_of("merge_method: ties\nbase_model: a\nmodels: [{model: b, parameters: {density: 0.5}}]")
    assert "model 'b' has no weight" in message and "weight: 1.0" in message


def test_density_outside_zero_one():
    message = problems_of("merge_method: ties\nbase_model: a\nmodels: [{model: b, parameters: {weight: 1, "
                          "density: 1.5}}]")
    assert "density = 1.5 is outside [0, 1]" in message


def test_density_in_a_gradient_is_checked_point_by_point():
    message = problems_of("merge_method: ties\nbase_model: a\nmodels: [{model: b, parameters: {weight: 1, "
                          "density: [0.5, -0.1]}}]")
    assert "density = -0.1 is outside [0, 1]" in message


def test_slerp_needs_exactly_two_models():
    message = problems_of("merge_method: slerp\nbase_model: a\nmodels: [{model: a}, {model: b}, {model: c}]\n"
                          "parameters: {t: 0.5}")
    assert "exactly two models" in message and "2 model(s) besides the base" in message


def test_linear_weights_summing_to_zero():
    message = problems_of("merge_method: linear\nmodels: [{model: a, parameters: {weight: 1}}, "
                          "{model: b, parameters: {weight: -1}}]")
    assert "add up to 0" in message and "normalize: false" in message


def test_della_density_plus_minus_epsilon_outside_zero_one():
    message = problems_of("merge_method: della\nbase_model: a\nmodels: [{model: b, parameters: {weight: 1, "
                          "density: 0.9, epsilon: 0.2}}]")
    assert "density ± epsilon inside (0, 1)" in message and "density 0.9" in message


def test_base_required_but_missing():
    message = problems_of("merge_method: task_arithmetic\nmodels: [{model: b, parameters: {weight: 1}}]")
    assert "needs a base_model" in message


def test_global_parameter_set_per_model():
    message = problems_of("merge_method: ties\nbase_model: a\nmodels: [{model: b, parameters: {weight: 1, "
                          "lambda: 2}}]")
    assert "lambda applies to the whole merge" in message and "top-level `parameters`" in message


def test_filters_without_fallback_for_a_required_weight():
    message = problems_of("merge_method: ties\nbase_model: a\nmodels: [{model: b, parameters: {weight: "
                          "[{filter: mlp, value: 1}]}}]")
    assert "do not cover every tensor" in message


def test_wrong_value_types_and_dtype():
    message = problems_of("merge_method: ties\nbase_model: a\nmodels: [{model: b, parameters: {weight: heavy}}]\n"
                          "parameters: {normalize: maybe}\ndtype: float8")
    assert "weight = 'heavy' must be a number" in message
    assert "normalize = 'maybe' must be true or false" in message
    assert "'float8' is not a supported dtype" in message


def test_unlisted_base_of_linear_needs_a_weight():
    message = problems_of("merge_method: linear\nbase_model: z\nmodels: [{model: a, parameters: {weight: 1}}]")
    assert "base_model 'z'" in message and "list it under `models`" in message


def test_all_problems_are_reported_at_once():
    with pytest.raises(RecipeError) as caught:
        load_recipe("merge_method: ties\nmodels: [{model: b, parameters: {density: 2}}]\nextra: 1")
    problems = caught.value.problems
    assert len(problems) == 4, problems  # unknown key, no base, density range, no weight
    assert str(caught.value).startswith("the recipe has 4 problems")


def test_not_a_mapping_and_not_yaml():
    assert "must be a mapping" in problems_of("- just\n- a list\n")
    assert "not valid YAML" in problems_of("merge_method: [unclosed\n")


def test_validate_recipe_on_a_built_recipe():
    recipe = Recipe("ties", [ModelEntry("b", {"weight": 1.0})], base_model="a")
    validate_recipe(recipe)  # valid: returns quietly
    recipe.models[0].parameters["density"] = -1
    with pytest.raises(RecipeError, match="density"):
        validate_recipe(recipe)


# --- resolution -----------------------------------------------------------------------------------------------

def test_gradients_filters_and_defaults_resolve_per_tensor():
    recipe = load_recipe(TIES_WITH_GRADIENTS)
    per_model, shared = resolve_parameters(recipe, "model.layers.2.self_attn.q_proj.weight", 5)
    assert per_model[0] == {"weight": pytest.approx(0.2 + 0.8 * 0.5), "density": 0.5}
    assert per_model[1] == {"weight": 0.3, "density": pytest.approx(0.1)}  # "1e-1": YAML string, mergekit's number
    assert shared["normalize"] is False and shared["lambda"] == 1.5
    assert shared["rescale"] is False  # the method's default filled in
    per_model, shared = resolve_parameters(recipe, "model.layers.4.mlp.up_proj.weight", 5)
    assert per_model[0]["weight"] == pytest.approx(1.0) and per_model[1]["weight"] == 0.7
    assert shared["normalize"] is True


def test_tensors_outside_the_layers_use_the_gradient_start():
    recipe = load_recipe(TIES_WITH_GRADIENTS)
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert resolve_parameters(recipe, name, 5)[0][0]["weight"] == pytest.approx(0.2)


def test_layer_position_matches_mergekit_planning():
    assert layer_position("model.layers.0.mlp.weight", 4) == 0.0
    assert layer_position("model.layers.3.mlp.weight", 4) == 1.0
    assert layer_position("transformer.h.1.attn.weight", 3) == 0.5
    assert layer_position("model.layers.0.mlp.weight", 1) == 1.0  # mergekit: t = 1 for a one-layer slice
    assert layer_position("model.embed_tokens.weight", 4) == 0.0


@pytest.mark.parametrize("setting", [
    [0.0, 1.0, 0.25],
    [1, 3],
    [{"filter": "mlp", "value": [0.0, 1.0]}, {"value": 0.5}],
    [{"filter": "self_attn", "value": 2.0}, {"filter": "*", "value": [4.0, 2.0, 0.0]}],
    {"filter": "mlp", "value": 0.9},
])
def test_evaluate_setting_agrees_with_mergekit(setting):
    names = ["model.layers.1.mlp.down_proj.weight", "model.layers.0.self_attn.o_proj.weight", "lm_head.weight"]
    for name in names:
        for x in (0.0, 0.2, 0.5, 0.9, 1.0):
            theirs = mergekit_evaluate(name, _mergekit_setting(setting), x, validate=float)
            ours = evaluate_setting(setting, name, x)
            if theirs is None:
                assert not isinstance(ours, float)  # no filter matched: ours is the "missing" sentinel
            else:
                assert ours == pytest.approx(theirs)


def _mergekit_setting(setting):
    from mergekit.config import ConditionalParameter

    if isinstance(setting, dict):
        return ConditionalParameter(**setting)
    if setting and isinstance(setting[0], dict):
        return [ConditionalParameter(**s) for s in setting]
    return setting


def test_model_value_wins_and_unmatched_filters_fall_back_to_global():
    recipe = load_recipe("merge_method: ties\nbase_model: a\nmodels:\n"
                         "- {model: b, parameters: {weight: 2, density: [{filter: mlp, value: 0.3}]}}\n"
                         "- {model: c}\nparameters: {weight: 1, density: 0.8}")
    per_model, _ = resolve_parameters(recipe, "model.layers.0.mlp.up_proj.weight", 2)
    assert per_model == [{"weight": 2.0, "density": 0.3}, {"weight": 1.0, "density": 0.8}]
    per_model, _ = resolve_parameters(recipe, "model.layers.0.self_attn.q_proj.weight", 2)
    assert per_model[0]["density"] == 0.8


def test_resolver_call_styles_agree_and_follow_merge_inputs():
    recipe = load_recipe(TIES_WITH_GRADIENTS)
    name = "model.layers.1.mlp.gate_proj.weight"
    assert ParameterResolver(recipe)(name, 3) == ParameterResolver(recipe, 3)(name) == resolve_parameters(
        recipe, name, 3)
    assert recipe.merge_inputs() == ["org/math", "org/japanese"]  # the listed base is not a merge input
    assert [m.model for m in recipe.merged_models()] == recipe.merge_inputs()
    linear = load_recipe("merge_method: linear\nbase_model: z\nmodels: [{model: a}]\nparameters: {weight: 1}")
    assert linear.merge_inputs() == ["a", "z"]  # mergekit merges an unlisted base as one more input
    with pytest.raises(TypeError, match="num_layers"):
        ParameterResolver(recipe)(name)
