"""The glue-bert preset (the SAMerging paper's setting) end to end on local folders of the same shape: a tiny BERT
base named bert-base-uncased, six fine-tunes with the GLUE heads (MNLI 3 labels), GLUE-shaped data with sentence
pairs. The Hub itself is out of reach here."""

from __future__ import annotations

import json
import random

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
