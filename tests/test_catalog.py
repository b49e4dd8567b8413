"""ui/catalog.py: the homework preset (Mistral-7B base, shisa-gamma and WizardMath, the Japanese GSM task set), task
sets of presets kept inside the app's folder, and a Hub check that answers at once even when a name lookup hangs."""

from __future__ import annotations

import threading

import pytest

from evaluation.tasks import load_tasks
from merging.errors import SourceError
from ui import catalog
from ui.catalog import HUB, load_catalog

HOMEWORK_MODELS = ("augmxnt/shisa-gamma-7b-v1", "WizardLMTeam/WizardMath-7B-V1.1")


def homework():
    return next(p for p in load_catalog() if p.base == "mistralai/Mistral-7B-v0.1")


def test_the_homework_preset_names_its_models_method_and_task_set():
    preset = homework()
    assert preset.needs_hub and preset.kind == "lm" and preset.models == HOMEWORK_MODELS
    assert preset.method == "dare_ties" and preset.parameters == {"weight": 0.5, "density": 0.5}
    tasks = load_tasks(preset.tasks_path)
    assert tasks.task_names == ["ja_gsm"] and len(tasks) >= 36


def test_presets_without_a_task_set_have_none():
    assert all(p.tasks_path is None for p in load_catalog() if p.source == "zoo")


@pytest.mark.parametrize("tasks", ["../outside.jsonl", "/etc/passwd", "assets/catalog.yaml"])
def test_a_preset_task_set_outside_the_app_or_not_jsonl_is_refused(tmp_path, tasks):
    path = tmp_path / "catalog.yaml"
    path.write_text(f'presets:\n  - {{name: x, source: hub, base: a/b, models: [c/d], tasks: "{tasks}"}}\n',
                    encoding="utf-8")
    with pytest.raises(SourceError, match="tasks must be a .jsonl file inside the app's folder"):
        load_catalog(path)


@pytest.fixture
def hanging_probe(monkeypatch):
    """A Hub probe stuck in a name lookup: it blocks until the test releases it."""
    release, finished = threading.Event(), threading.Event()

    def probe(timeout_s: float) -> bool:
        release.wait(60)
        finished.set()
        return True

    monkeypatch.setattr(catalog, "probe_hub", probe)
    monkeypatch.setattr(catalog, "HUB_CHECK_TIMEOUT_S", 0.05)
    monkeypatch.setattr(catalog, "HUB_CHECK_GRACE_S", 0.05)
    HUB.forget()
    yield finished
    release.set()
    HUB.forget()


def test_a_hanging_hub_check_answers_unreachable_without_waiting_for_it(hanging_probe):
    assert HUB.reachable(timeout_s=0.05) is False
    assert not hanging_probe.is_set()  # answered while the probe was still stuck


def test_choosing_the_homework_preset_offline_says_it_needs_the_hub(hanging_probe):
    from ui import models_panel

    text = models_panel.describe_preset(homework().name)
    assert "needs the Hugging Face Hub" in text and "cannot reach" in text
    assert not hanging_probe.is_set()


# --- one click on a GPU host: the preset fills base, sources, method and task set --------------------------------

def test_checking_the_homework_preset_takes_its_models_method_and_task_set(tmp_path, monkeypatch):
    """check_models with the homework preset chosen. The 7B Hub models are stood in for by the zoo's tiny LM family
    (opened by the real select_models): what is checked is what the preset adds on top of the models."""
    from ui import models_panel
    from ui.hosting import HostConfig
    from ui.session import new_session

    preset = homework()
    choice = models_panel.preset_choice(preset)
    assert (choice.origin, choice.base, choice.sources.splitlines()) == ("Hub ids", preset.base, list(HOMEWORK_MODELS))
    real_select = models_panel.select_models

    def tiny_stand_ins(session, config, origin, family, experts, base, sources, progress=None):
        assert (origin, base, sources) == (choice.origin, choice.base, choice.sources)
        real_select(session, config, "Zoo", "lm", ["math", "japanese"], "", "", progress=progress)

    monkeypatch.setattr(models_panel, "select_models", tiny_stand_ins)
    session = new_session()
    config = HostConfig.detect(hosted=False, models_dir=tmp_path / "models")
    models_panel.check_models(session, config, choice, preset.name)
    assert session.tasks_path == preset.tasks_path  # not the stand-in family's own task set
    assert session.merge_settings.method == "dare_ties"
    assert session.merge_settings.weights == [0.5, 0.5] and session.merge_settings.params == {"density": 0.5}


def test_the_evaluate_table_shows_japanese_reply_accuracy_in_its_own_column():
    from ui.evaluate_panel import summary_markdown

    def task(japanese):
        return {"expert": None, "agreement": None, "accuracy": 0.75, "expert_accuracy": None, "examples": 4,
                "japanese_accuracy": japanese}

    summary = {"agreement": None, "accuracy": 0.75, "normalized_accuracy": None}
    table = summary_markdown({"tasks": {"ja_gsm": task(0.5), "other": task(None)}, "summary": summary})
    header, rule, ja_row, other_row = table.splitlines()[:4]
    assert "accuracy, Japanese replies" in header and header.count("|") == rule.count("|")
    assert "| 75% | 50% |" in ja_row and "| 75% | – |" in other_row
    plain = summary_markdown({"tasks": {"other": task(None)}, "summary": summary})
    assert "Japanese replies" not in plain


def test_the_evaluate_table_names_the_best_single_source_of_a_task_no_expert_owns():
    from ui.evaluate_panel import summary_markdown

    tasks = {"math": {"expert": "math", "agreement": 0.9, "accuracy": 0.8, "expert_accuracy": 0.85, "examples": 10,
                      "accuracy_by_source": {"math": 0.85, "japanese": 0.1}},
             "japanese_math": {"expert": None, "agreement": None, "accuracy": 0.4, "expert_accuracy": 0.1,
                               "examples": 10, "accuracy_by_source": {"math": 0.0, "japanese": 0.1}}}
    summary = {"agreement": 0.9, "accuracy": 0.6, "normalized_accuracy": None}
    rows = summary_markdown({"tasks": tasks, "summary": summary}).splitlines()
    math_row = next(r for r in rows if r.startswith("| math |"))
    composite_row = next(r for r in rows if r.startswith("| japanese_math |"))
    assert "| 85% | 10 |" in math_row
    assert "no expert of its own; best single source: japanese 10%" in composite_row


# --- the tiny zoo's preset shows composition: math asked in Japanese -------------------------------------------

def test_the_tiny_zoo_preset_merge_answers_prompts_neither_expert_does():
    """The catalog promises that the preset's starting merge answers its suggested prompts: the composite ones
    (七十-六=) right where neither expert alone does. Checked with the app's own merge and answer rule."""
    from evaluation.agreement import load_state_into
    from evaluation.answers import extract_answer
    from inference.generation import generate_batch
    from inference.loading import load_model
    from merging.live import LiveMerger
    from merging.recipe import Recipe
    from merging.sources import open_model
    from ui.models_panel import preset_settings
    from zoo.families import families
    from zoo.lm_tasks import true_value

    preset = catalog.get_preset("Zoo · language models: math + japanese")
    family = families()["lm"]
    folders = {"base": family.base, **{name: family.experts[name] for name in preset.models}}
    states = {}
    for name, folder in folders.items():
        source = open_model(str(folder))
        states[name] = {key: source.get(key) for key in source.tensor_names()}
    settings = preset_settings(preset, len(preset.models))
    recipe = Recipe.from_dict({
        "merge_method": preset.method, "base_model": "base", "dtype": "float32", "parameters": settings.params,
        "models": [{"model": m, "parameters": {"weight": w}} for m, w in zip(preset.models, settings.weights)]})
    merger = LiveMerger(states["base"], {m: states[m] for m in preset.models}, num_layers=source.num_layers)
    model = load_model(str(folders["math"]))

    def answers(state, prompts=preset.prompts) -> list[str | None]:
        load_state_into(model.model, state, backbone_only=False)
        return [extract_answer(text) for text in generate_batch(model.model, model.tokenizer, list(prompts), 16)]

    truth = [str(true_value(p)) for p in preset.prompts]
    merged = merger.merge(recipe)
    assert answers(merged) == truth
    composite = [i for i, p in enumerate(preset.prompts) if p.endswith("=")]
    assert composite, "the preset suggests no composite (kanji arithmetic) prompt"
    for expert in preset.models:
        got = answers(states[expert])
        assert all(got[i] != truth[i] for i in composite), (expert, got)
    # Its description shows interference on 13+6= (the merge answers 29, the math expert 19): still so.
    assert "13+6= gets 29 here, 19 from the math expert" in preset.about
    assert answers(merged, ["13+6="]) == ["29"] and answers(states["math"], ["13+6="]) == ["19"]


def test_a_preset_gives_one_weight_or_one_per_model():
    from ui.models_panel import preset_settings

    preset = catalog.Preset(name="p", source="zoo", models=("a", "b"), family="lm", parameters={"weight": [1.0, 0.5]})
    assert preset_settings(preset, 2).weights == [1.0, 0.5]
    uniform = catalog.Preset(name="u", source="zoo", models=("a", "b"), family="lm", parameters={"weight": 0.3})
    assert preset_settings(uniform, 2).weights == [0.3, 0.3]
    with pytest.raises(SourceError, match="3 weights for 2 models"):
        preset_settings(catalog.Preset(name="x", source="zoo", models=("a", "b"), family="lm",
                                       parameters={"weight": [1, 2, 3]}), 2)
