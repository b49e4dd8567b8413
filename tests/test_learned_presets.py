"""The glue-bert preset (the SAMerging paper's setting) end to end on local folders of the same shape: a tiny BERT
base named bert-base-uncased, six fine-tunes with the GLUE heads (MNLI 3 labels), GLUE-shaped data with sentence
pairs. The Hub itself is out of reach here."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from merging.errors import TaskSetError
from merging.learned import presets
from merging.learned.adapters import read_state
from tests.test_learned_adapters import make_classifier_family

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = ["a b", "c d", "x y", "no", "yes", "q r", "t u", "v w", "hi", "ok"]


@pytest.fixture(scope="module")
def glue_like(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    tasks = presets.GLUE_BERT_TASKS
    base, experts = make_classifier_family(root / "raw", labels=tuple(3 if t.name == "mnli" else 2 for t in tasks))
    models = root / "models"
    models.mkdir()
    base.rename(models / "bert-base-uncased")
    for task, folder in zip(tasks, experts.values()):
        folder.rename(models / task.expert.split("/")[-1])
    data = root / "data"
    data.mkdir()
    rng = random.Random(0)
    for task in tasks:
        labels = 3 if task.name == "mnli" else 2
        with (data / f"{task.name}.jsonl").open("w") as f:
            for split, n in (("train", 40), ("validation", 12)):
                for i in range(n):  # distinct inputs (numbered), so the held-out quarter is exactly 8 of 32
                    first = f"{rng.choice(WORDS)} {i}"
                    text = first if len(task.fields) == 1 else [first, rng.choice(WORDS)]
                    f.write(json.dumps({"split": split, "text": text, "label": rng.randrange(labels)}) + "\n")
    return models, data


def test_glue_bert_preset_learns_and_reports_every_task(glue_like, tmp_path, capsys):
    from merging.cli import main

    models, data = glue_like
    out = tmp_path / "run"
    code = main(["learn", "--preset", "glue-bert", "--preset-models", str(models), "--preset-data", str(data),
                 "--steps", "2", "--quiet", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report) == [t.name for t in presets.GLUE_BERT_TASKS]
    for r in report.values():
        assert r["examples"] == 12
        assert 0 <= r["agreement"] <= 1 and 0 <= r["accuracy"] <= 1 and 0 <= r["teacher_accuracy"] <= 1
    info = json.loads((out / "learned.json").read_text())
    assert info["heldout_examples"] == 6 * 8  # 32 unlabeled inputs per task by default, a quarter held out
    assert len(info["tasks"]) == 6
    printed = capsys.readouterr().out
    assert "| mnli | 12 |" in printed and "| mean |" in printed
    for r in report.values():  # each example's outcomes, which the compared table's intervals are built on
        assert sum(r["outcomes"]["accuracy"]) == round(r["accuracy"] * 12)
        assert sum(r["outcomes"]["agreement"]) == round(r["agreement"] * 12)


def test_the_printed_compare_command_scores_the_run_beside_its_baselines_with_intervals(glue_like, tmp_path, capsys):
    """learn --preset prints the `python -m evaluation compare` command for its run; run literally, it scores the
    learned merge beside the three baselines (chosen on the learning split) on the same validation examples, with
    each mean's scored-set error and the paired learned − baseline interval."""
    import shlex

    from evaluation.cli import main as evaluation_main
    from merging.cli import main

    models, data = glue_like
    out = tmp_path / "run"
    assert main(["learn", "--preset", "glue-bert", "--preset-models", str(models), "--preset-data", str(data),
                 "--eval-per-task", "10", "--steps", "2", "--quiet", "--out", str(out)]) == 0
    command = next(line.strip() for line in capsys.readouterr().out.splitlines()
                   if line.strip().startswith("python -m evaluation compare"))
    words = shlex.split(command)[3:]
    assert words[words.index("--per-task") + 1] == "10"
    assert evaluation_main(words) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "comparison.json").read_text())
    learned = "learned (samerging)"
    assert list(result["scores"]) == [learned, "task arithmetic", "task arithmetic, task-wise λ", "TIES"]
    report = json.loads((out / "report.json").read_text())
    for task, r in report.items():  # the learned row is the run's own report, on the same 10 examples
        assert result["scores"][learned]["tasks"][task]["accuracy"] == r["accuracy"]
        assert result["scores"][learned]["tasks"][task]["examples"] == 10
    for name, choice in result["baseline_choices"].items():
        assert "chosen on the learning split" in choice["described"]
        assert choice["learning_split_agreement"] == max(t["learning_split_agreement"] for t in choice["tried"])
    for name in result["scores"]:
        assert 0 < result["scored_set_halfwidth"][name]["accuracy"] < 1
    for name in ("task arithmetic", "task arithmetic, task-wise λ", "TIES"):
        difference = result["learned_minus_baseline"][name]["accuracy"]
        ours = result["scores"][learned]["summary"]["accuracy"]
        theirs = result["scores"][name]["summary"]["accuracy"]
        assert abs(difference["mean"] - (ours - theirs)) < 1e-9
        assert difference["low"] <= difference["mean"] <= difference["high"]
    assert "±" in printed and "| learned (samerging) |" in printed and "paired" in printed


def test_compare_preset_refuses_a_run_of_other_tasks(glue_like, tmp_path):
    from evaluation.learned_presets import compare_preset
    from merging.errors import MergeLabError

    with pytest.raises(MergeLabError, match="holds no readable learned.json"):
        compare_preset(tmp_path, "glue-bert", models_dir=glue_like[0], data_dir=glue_like[1])


def test_baselines_are_chosen_on_the_learning_split_and_scored_like_the_learned_merge(glue_like):
    """compare_with_baselines: each baseline is the best of its candidates by agreement on the unlabeled inputs;
    the learned row equals score(); task arithmetic at its chosen λ, merged by the engine's step, scores as the
    learned-merge path does at that constant λ (coefficients all λ)."""
    from merging.learned import baselines as rules
    from merging.learned.adapters import setup_classifier

    models, data = glue_like
    base, experts = presets.resolve_models("glue-bert", models, allow_pickle=False)
    unlabeled, scored = presets.load_data("glue-bert", data, 8, 12)
    names = setup_classifier(base, experts, unlabeled, need_teachers=False).vectors.names
    learned = torch.full((6,), 0.4)
    comparison = presets.compare_with_baselines(base, experts, learned, names, unlabeled, scored)
    assert comparison["learned"] == presets.score(base, experts, learned, names, scored)
    choices = {name: b["choice"] for name, b in comparison["baselines"].items()}
    assert list(choices) == [rules.UNIFORM, rules.TASK_WISE, rules.TIES]
    for choice in choices.values():
        assert choice.score == max(v for _, v in choice.tried)
    assert choices[rules.TASK_WISE].score >= choices[rules.UNIFORM].score
    assert len(choices[rules.TIES].tried) == len(rules.TIES_DENSITIES) * len(rules.TIES_LAMBDAS)
    lam = choices[rules.UNIFORM].settings["weights"][0]
    assert comparison["baselines"][rules.UNIFORM]["tasks"] == presets.score(base, experts, torch.full((6,), lam),
                                                                            names, scored)


def test_scores_match_a_direct_reading_of_each_expert(glue_like):
    """At λ = e_t the merged backbone is expert t: its agreement with teacher t is 100 %."""
    models, data = glue_like
    base, experts = presets.resolve_models("glue-bert", models, allow_pickle=False)
    _, scored = presets.load_data("glue-bert", data, 32, 12)
    names = list(read_state(experts["cola"]))
    from merging.learned.adapters import setup_classifier

    setup = setup_classifier(base, experts, {t: [x for x, _ in rows] for t, rows in scored.items()}, batch_size=32)
    lam = torch.zeros(6, setup.vectors.num_tensors)
    lam[1] = 1.0  # the mnli expert's backbone
    report = presets.score(base, experts, lam, setup.vectors.names, scored)
    assert report["mnli"]["agreement"] == 1.0
    assert names  # the experts are readable safetensors folders


def test_mnli_accuracy_maps_glue_labels_to_the_teachers_head_ids(glue_like, tmp_path):
    """A tiny MNLI teacher whose head is permuted as textattack's is (GLUE label g is head id [1, 2, 0][g]), scored
    on labels that are its own predictions in GLUE's ids: 100 % accuracy. Compared directly, the ids would never
    match ([1, 2, 0] moves every label): 0 %."""
    import shutil

    from merging.learned.adapters import setup_classifier

    models, data = (tmp_path / "models", tmp_path / "data")
    shutil.copytree(glue_like[0], models)
    shutil.copytree(glue_like[1], data)
    base, experts = presets.resolve_models("glue-bert", models, allow_pickle=False)
    rows = [json.loads(line) for line in (data / "mnli.jsonl").read_text().splitlines()]
    validation = [tuple(r["text"]) for r in rows if r["split"] == "validation"]
    setup = setup_classifier(base, {"mnli": experts["mnli"]}, {"mnli": validation}, batch_size=32, temperature=1.0)
    glue_labels = [int(i) for b in range(len(setup.teachers[0])) for i in setup.teacher(0, b).probs.argmax(-1)]
    assert len(set(glue_labels)) > 1  # a decisive head that uses more than one class
    it = iter(glue_labels)
    with (data / "mnli.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps({**r, "label": next(it)} if r["split"] == "validation" else r) + "\n")
    label_map = presets.GLUE_BERT_TASKS[1].label_map
    assert label_map == (1, 2, 0)
    weights = load_file(str(Path(experts["mnli"]) / "model.safetensors"))
    inverse = [label_map.index(j) for j in range(3)]  # head row j now holds GLUE class inverse[j]
    for name in ("classifier.weight", "classifier.bias"):
        weights[name] = weights[name][inverse].contiguous()
    save_file(weights, str(Path(experts["mnli"]) / "model.safetensors"), metadata={"format": "pt"})

    _, scored = presets.load_data("glue-bert", data, 32, 12)
    assert [y for _, y in scored["mnli"]] == [label_map[g] for g in glue_labels]
    assert [y for _, y in scored["cola"]] == [r["label"] for r in map(json.loads, (data / "cola.jsonl").open())
                                              if r["split"] == "validation"]  # other tasks keep GLUE's ids
    names = setup_classifier(base, experts, {t: [x for x, _ in v] for t, v in scored.items()},
                             batch_size=32).vectors.names
    lam = torch.zeros(6, len(names))
    lam[1] = 1.0  # the mnli teacher's own backbone
    report = presets.score(base, experts, lam, names, scored)
    assert report["mnli"]["teacher_accuracy"] == 1.0 and report["mnli"]["accuracy"] == 1.0
    direct = sum(label_map[g] == g for g in glue_labels) / len(glue_labels)
    assert direct == 0.0  # what comparing GLUE's ids with the head's directly would have given


def test_legacy_layernorm_names_are_read_as_weight_and_bias(tmp_path):
    save_file({"bert.embeddings.LayerNorm.gamma": torch.ones(2), "bert.embeddings.LayerNorm.beta": torch.zeros(2)},
              str(tmp_path / "model.safetensors"))
    assert set(read_state(tmp_path)) == {"bert.embeddings.LayerNorm.weight", "bert.embeddings.LayerNorm.bias"}
    assert set(load_file(str(tmp_path / "model.safetensors"))) != set(read_state(tmp_path))


def test_preset_data_errors_say_what_to_fix(tmp_path):
    with pytest.raises(TaskSetError, match="no cola.jsonl"):
        presets.load_data("glue-bert", tmp_path, 32, 10)
    (tmp_path / "cola.jsonl").write_text('{"split": "train", "text": "a"}\n')
    with pytest.raises(TaskSetError, match="cola.jsonl:1 needs split, text"):
        presets.load_data("glue-bert", tmp_path, 32, 10)
    from merging.errors import MergeLabError

    with pytest.raises(MergeLabError, match="lacks model folders"):
        presets.resolve_models("glue-bert", tmp_path, allow_pickle=False)
