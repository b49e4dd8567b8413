"""A recipe is built and validated once per merge (issue 21.2): the page builds it from its settings by label, the
recorded/exported recipe and the engine's are pure renamings of it, and the page keeps only its own checks (bounds
are the recipe validator's, in words that say what the parameter does)."""

from __future__ import annotations

import pytest

from merging import recipe as recipe_module
from merging.errors import RecipeError
from merging.recipe import Recipe, load_recipe
from merging.settings import MergeSettings
from tests.factory import make_family
from ui import models_panel, workspace
from ui.hosting import HostConfig
from ui.session import new_session

SETTINGS = MergeSettings("ties", [0.7, 0.3], {"density": 0.5, "lambda": 1.0}, 0)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("one") / "f", n_experts=2, layers=1)


@pytest.fixture
def config(tmp_path) -> HostConfig:
    return HostConfig.detect(hosted=False, models_dir=tmp_path / "models")


@pytest.fixture
def session(family, config):
    session = new_session()
    choice = models_panel.ModelsChoice("Local folders", None, [], str(family.base),
                                       "\n".join(str(p) for p in family.experts))
    assert "ready to merge" in models_panel.check_models(session, config, choice)
    return session


@pytest.fixture
def validations(monkeypatch):
    """Each recipe actually validated (the page's builder, LiveMerger and the engine's preflight all call
    validate_recipe; a recipe validated before and unchanged since is not checked again)."""
    calls: list[Recipe] = []
    real = recipe_module._problems

    def counting(recipe):
        calls.append(recipe)
        return real(recipe)

    monkeypatch.setattr(recipe_module, "_problems", counting)
    return calls


def test_a_folder_merge_builds_and_validates_its_recipe_once(session, config, validations):
    workspace.merge_to_folder(session, config, SETTINGS, "once")
    assert len(validations) == 1
    built = validations[0]
    assert [m.model for m in built.models] == session.labels  # built by label; the engine read a renaming
    assert session.merge.recipe is built  # the record keeps the recipe as merged


def test_a_folder_merged_from_the_page_names_no_server_folder(session, config, family, monkeypatch):
    """The merged folder's card and recipe files name each model as Export does: a zoo folder relative to the app
    (here the family is put inside it), not where the server keeps it."""
    monkeypatch.setattr(workspace, "APP_ROOT", family.base.parent.parent)
    out = workspace.merge_to_folder(session, config, SETTINGS, "shown")
    written = "".join((out / name).read_text() for name in ("README.md", "mergekit_config.yml", "mergelab_recipe.yaml"))
    assert str(family.base.parent) not in written
    assert all(f"f/{folder.name}" in written for folder in (family.base, *family.experts))


def test_export_and_reports_name_the_recorded_recipe_s_models_portably(session):
    from ui import export_panel

    workspace.prepare_live(session)
    workspace.merge_live(session, SETTINGS)
    recorded = session.merge.recipe
    assert [m.model for m in recorded.models] == session.labels
    exported = workspace.recorded_recipe(session, recorded)
    assert [m.model for m in exported.models] == [workspace._portable(s) for s in session.sources]
    assert [m.parameters for m in exported.models] == [m.parameters for m in recorded.models]
    text = export_panel.recipe_export(session).text
    assert all(workspace._portable(s) in text for s in session.sources)
    assert not any(f"model: {label}" in text for label in session.labels)


def test_a_live_merge_builds_and_validates_its_recipe_once(session, validations):
    workspace.prepare_live(session)
    workspace.merge_live(session, SETTINGS)
    assert len(validations) == 1
    assert session.merge.recipe is validations[0]


def test_a_control_move_is_one_call_that_merges_and_records_it(session):
    """workspace.apply_move: the controls' values in, the merge recorded and what the panel words out; an older
    move is dropped; a method without per-model weights takes no slider's value."""
    from ui import merge_panel

    workspace.prepare_live(session)
    moved = workspace.apply_move(session, "ties", [0.7, 0.3, 0.5], {"density": 0.5, "lambda": None}, 3.0, 10.0)
    assert moved.record is session.merge and moved.record.mode == "live" and moved.kind == session.kind
    assert moved.settings == MergeSettings("ties", [0.7, 0.3], {"density": 0.5}, 3)
    assert moved.labels == session.labels
    status = merge_panel.move_status(moved)
    assert status.startswith("✓ Merged with **ties** · weights: ") and f"#{moved.record.version}" in status
    assert workspace.apply_move(session, "ties", [0.1, 0.1], {}, 0, 9.0) is None  # older than the merged move
    assert session.merge is moved.record
    again = workspace.apply_move(session, "ties", [0.7, 0.3, 0.5], {"density": 0.5, "lambda": None}, 3.0, 10.5)
    assert again.record is moved.record and session.merge is moved.record  # the same values: not merged again
    unweighted = workspace.apply_move(session, "sce", [0.7, 0.3], {}, 0, 11.0)
    assert unweighted.settings.weights == [] and session.merge is unweighted.record
    assert "weights:" not in merge_panel.move_status(unweighted)


def test_a_move_where_models_merge_to_a_folder_only_checks_the_settings(session):
    from ui import merge_panel

    session.live = None
    moved = workspace.apply_move(session, "ties", [0.7, 0.3], {"density": 0.5}, 0, 1.0)
    assert moved.record is None and session.merge is None
    assert "press **Merge**" in merge_panel.move_status(moved)
    with pytest.raises(RecipeError, match="'gamma' is not a parameter of ties"):  # checked as /merge checks JSON
        workspace.apply_move(session, "ties", [0.7, 0.3], {"gamma": 0.1}, 0, 2.0)


def test_the_engine_s_recipe_is_a_renaming_of_the_built_one(session):
    built = workspace.build_recipe(session, SETTINGS)
    folders = workspace.folder_recipe(session, built)
    assert folders.base_model == str(session.base.path)
    assert [m.model for m in folders.models] == [str(s.path) for s in session.sources]
    assert [m.parameters for m in folders.models] == [m.parameters for m in built.models]
    assert folders.parameters == built.parameters and folders.merge_method == built.merge_method


def test_bounds_are_the_validator_s_in_the_page_s_words(session):
    bad = MergeSettings("ties", [0.7, 0.3], {"density": 1.5}, 0)
    with pytest.raises(RecipeError) as error:
        workspace.build_recipe(session, bad)
    message = str(error.value)
    assert "density = 1.5 is outside [0, 1]" in message
    assert "Fraction of each task vector's entries kept" in message  # what the parameter does, as the page says
    with pytest.raises(RecipeError, match="give one weight per source model"):  # a page-only check stays
        workspace.build_recipe(session, MergeSettings("ties", [0.7], {}, 0))


def test_renaming_is_pure_and_refuses_two_models_under_one_name():
    recipe = load_recipe("merge_method: ties\nbase_model: base\nmodels:\n  - {model: a, parameters: {weight: 1, "
                         "density: 0.5}}\n  - {model: b, parameters: {weight: 1, density: 0.5}}\n"
                         "tokenizer_source: base\n")
    renamed = recipe.renamed({"a": "/x/a", "base": "/x/base"})
    assert [m.model for m in renamed.models] == ["/x/a", "b"] and renamed.base_model == "/x/base"
    assert renamed.tokenizer_source == "base"  # mergekit's keyword, not a model
    assert [m.model for m in recipe.models] == ["a", "b"]  # the original is untouched
    renamed.models[0].parameters["weight"] = 9
    assert recipe.models[0].parameters["weight"] == 1
    with pytest.raises(RecipeError, match="chosen twice"):
        recipe.renamed({"a": "same", "b": "same"})
    with pytest.raises(RecipeError, match="chosen twice"):  # the base chosen as a source too
        recipe.renamed({"a": "same", "base": "same"})


def test_a_validated_recipe_changed_afterwards_is_validated_again(validations):
    recipe = load_recipe("merge_method: ties\nbase_model: base\nmodels:\n  - {model: a, parameters: {weight: 1}}\n")
    recipe_module.validate_recipe(recipe)
    recipe_module.validate_recipe(recipe.renamed({"a": "/x/a"}))
    assert len(validations) == 1  # load_recipe validated it; unchanged and renamed: not again
    recipe.models[0].parameters["density"] = 7.0
    with pytest.raises(RecipeError, match=r"density = 7.0 is outside \[0, 1\]"):
        recipe_module.validate_recipe(recipe)
