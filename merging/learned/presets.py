"""The SAMerging paper's own setting as one command: bert-base-uncased with the six textattack GLUE teachers.

    python -m merging learn --preset glue-bert --out runs/glue-bert [--allow-pickle] [--device cuda]

Models come from the Hub (textattack/bert-base-uncased-{CoLA,MNLI,MRPC,QNLI,QQP,SST-2}; those repositories hold
PyTorch pickles, so the command needs --allow-pickle, which loads them with weights_only), data from the GLUE dataset
(`datasets.load_dataset("nyu-mll/glue", task)`): the first 32 training inputs of each task are the unlabeled inputs
(labels never read), the first `--eval-per-task` validation examples (MNLI: validation_matched) are scored. The
report gives, per task, the merged model's agreement with the task's teacher and its accuracy, beside the teacher's
own accuracy. `python -m evaluation compare OUT --preset glue-bert` (evaluation/learned_presets.py) then puts it
beside task arithmetic (uniform and task-wise λ) and TIES, each chosen on the unlabeled inputs (compare_with_baselines
here), with the scored set's 95 % intervals. GLUE's labels are mapped to each teacher's head ids first: textattack's
MNLI head orders the classes differently from GLUE (its own evaluation remaps GLUE's labels with [1, 2, 0]).

Offline (or to test): `--preset-models DIR` holds folders named like the Hub repositories' last part
(DIR/bert-base-uncased, DIR/bert-base-uncased-CoLA, ...) and `--preset-data DIR` one JSONL per task
(DIR/cola.jsonl: {"split": "train" | "validation", "text": str or [first, second], "label": int}).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from merging.errors import MergeLabError, TaskSetError
from merging.learned.adapters import setup_classifier
from merging.learned.baselines import choose, settings_recipe
from merging.sources import download_from_hub
from merging.step import MergeStep


@dataclass(frozen=True)
class GlueTask:
    name: str  # GLUE config name
    expert: str  # Hub repository of the teacher
    fields: tuple[str, ...]  # one field (single sentence) or two (a pair)
    validation: str = "validation"
    # GLUE label g is the teacher's head id label_map[g]; None = the same ids. textattack trained its MNLI model on
    # other ids than GLUE's (entailment 0, neutral 1, contradiction 2): its own evaluation remaps GLUE's labels with
    # [1, 2, 0] (textattack's HUGGINGFACE_DATASET_BY_MODEL, "bert-base-uncased-mnli"). Its configs only say LABEL_0…
    label_map: tuple[int, ...] | None = None

    def head_id(self, glue_label: int) -> int:
        """The teacher's head id for a GLUE label."""
        if self.label_map is None:
            return glue_label
        if not 0 <= glue_label < len(self.label_map):
            raise TaskSetError(f"{self.name}: GLUE label {glue_label} is outside 0..{len(self.label_map) - 1}")
        return self.label_map[glue_label]


GLUE_BERT_BASE = "google-bert/bert-base-uncased"
GLUE_BERT_TASKS = (
    GlueTask("cola", "textattack/bert-base-uncased-CoLA", ("sentence",)),
    GlueTask("mnli", "textattack/bert-base-uncased-MNLI", ("premise", "hypothesis"), "validation_matched",
             label_map=(1, 2, 0)),
    GlueTask("mrpc", "textattack/bert-base-uncased-MRPC", ("sentence1", "sentence2")),
    GlueTask("qnli", "textattack/bert-base-uncased-QNLI", ("question", "sentence")),
    GlueTask("qqp", "textattack/bert-base-uncased-QQP", ("question1", "question2")),
    GlueTask("sst2", "textattack/bert-base-uncased-SST-2", ("sentence",)),
)
PRESETS = {"glue-bert": (GLUE_BERT_BASE, GLUE_BERT_TASKS)}
UNLABELED_PER_TASK = 32


def resolve_models(preset: str, models_dir: str | Path | None, *, allow_pickle: bool) -> tuple[str, dict[str, str]]:
    """(base folder, {task: expert folder}): local folders under `models_dir`, else downloaded from the Hub."""
    base, tasks = _preset(preset)
    if models_dir is not None:
        root = Path(models_dir)
        folders = {"base": root / base.split("/")[-1], **{t.name: root / t.expert.split("/")[-1] for t in tasks}}
        missing = [str(f) for f in folders.values() if not (f / "config.json").is_file()]
        if missing:
            raise MergeLabError(f"--preset-models {root} lacks model folders {missing}: name them like the Hub "
                                "repositories' last part (bert-base-uncased, bert-base-uncased-CoLA, ...)")
        return str(folders.pop("base")), {k: str(v) for k, v in folders.items()}
    base_dir = download_from_hub(base, allow_pickle=allow_pickle)
    return str(base_dir), {t.name: str(download_from_hub(t.expert, allow_pickle=allow_pickle)) for t in tasks}


def load_data(preset: str, data_dir: str | Path | None, per_task: int, eval_per_task: int
              ) -> tuple[dict[str, list[Any]], dict[str, list[tuple[Any, int]]]]:
    """(unlabeled inputs per task: the first `per_task` training inputs, scored (input, label) pairs per task: the
    first `eval_per_task` validation examples, each GLUE label turned into the teacher's head id (GlueTask.label_map:
    MNLI's differ), so that accuracy compares like with like). A pair task's input is a (first, second) tuple."""
    _, tasks = _preset(preset)
    unlabeled, scored = {}, {}
    for task in tasks:
        train, validation = _local_rows(Path(data_dir), task) if data_dir is not None else _hub_rows(task, per_task)
        if len(train) < per_task or not validation:
            raise TaskSetError(f"{task.name}: {len(train)} training inputs and {len(validation)} validation examples; "
                               f"need {per_task} and at least one")
        unlabeled[task.name] = [x for x, _ in train[:per_task]]
        scored[task.name] = [(x, task.head_id(y)) for x, y in validation[:eval_per_task]]
    return unlabeled, scored


def score(base: str, experts: dict[str, str], coefficients, names: list[str],
          scored: dict[str, list[tuple[Any, int]]], *, device: str = "cpu", batch_size: int = 32) -> dict[str, dict]:
    """Per task: agreement of the merged backbone (θ(λ), read through the task's head) with the teacher, its
    accuracy, and the teacher's accuracy, on the scored examples."""
    setup = _scoring_setup(base, experts, names, scored, None, device, batch_size)
    setup.vectors.materialize(coefficients, setup.params)
    return _task_report(setup, scored)


def compare_with_baselines(base: str, experts: dict[str, str], coefficients, names: list[str],
                           unlabeled: dict[str, list[Any]], scored: dict[str, list[tuple[Any, int]]], *,
                           device: str = "cpu", batch_size: int = 32) -> dict[str, Any]:
    """The learned merge's report (as `score`) beside the baselines evaluation.baselines compares with: uniform and
    task-wise task arithmetic and TIES (merging.learned.baselines), each chosen by mean agreement with the teachers
    on the learning split (`unlabeled`, the inputs the merge was learned from; labels never read), never on the
    scored set. {"learned": report, "baselines": {name: {"choice": BaselineChoice, "tasks": report}}}."""
    setup = _scoring_setup(base, experts, names, scored, unlabeled, device, batch_size)
    num_layers = int(json.loads((Path(base) / "config.json").read_text()).get("num_hidden_layers", 1))

    def merge_into_model(settings: dict) -> None:
        _merge_settings(setup, settings, num_layers)

    def selection(settings: dict) -> float:
        merge_into_model(settings)
        return sum(_agreement(setup, t, "heldout") for t in range(len(setup.tasks))) / len(setup.tasks)

    baselines = {}
    for name, choice in choose(selection, len(setup.tasks)).items():
        merge_into_model(choice.settings)
        baselines[name] = {"choice": choice, "tasks": _task_report(setup, scored)}
    setup.vectors.materialize(coefficients, setup.params)
    return {"learned": _task_report(setup, scored), "baselines": baselines}


def _scoring_setup(base: str, experts: dict[str, str], names: list[str], scored: dict[str, list[tuple[Any, int]]],
                   unlabeled: dict[str, list[Any]] | None, device: str, batch_size: int):
    """The teachers' outputs on the scored inputs (the "train" split here) and on the learning split (the "heldout"
    one, when given), with one merged backbone read through each task's head."""
    inputs = {t: [x for x, _ in rows] for t, rows in scored.items()}
    setup = setup_classifier(base, experts, inputs, batch_size=batch_size, device=device, temperature=1.0,
                             heldout=unlabeled)
    if list(setup.vectors.names) != list(names):
        raise MergeLabError("the learned coefficients do not match these models' tensors")
    return setup


@torch.no_grad()
def _merge_settings(setup, settings: dict, num_layers: int) -> None:
    """Write the merge of `settings` (a method, one weight per task, its parameters) into the backbone, tensor by
    tensor, with the engine's own merge step; the experts are rebuilt per tensor from the base and the task vectors."""
    vectors = setup.vectors
    step = MergeStep(settings_recipe("base", list(setup.tasks), settings), num_layers)
    for name in vectors.names:
        shape = vectors.shapes[name]
        base = vectors.base[name].to(vectors.device)
        block = vectors.blocks[name].to(vectors.device)
        merged = step(name, base.view(shape), [(base + block[t]).view(shape) for t in range(vectors.num_tasks)])
        setup.params[name].copy_(merged.reshape(shape))


@torch.no_grad()
def _predictions(setup, task: int, split: str) -> tuple[list[int], list[int]]:
    """(the merged backbone's classes, the teacher's) for every input of `task` in `split`."""
    own = (setup.teachers if split == "train" else setup.heldout_teachers)[task]
    merged, teacher = [], []
    for b in range(len(own)):
        merged += setup.student_logits(task, b, split).argmax(-1).tolist()
        teacher += setup.teacher(task, b, split).probs.argmax(-1).tolist()
    return merged, teacher


def _agreement(setup, task: int, split: str) -> float:
    merged, teacher = _predictions(setup, task, split)
    return sum(m == e for m, e in zip(merged, teacher, strict=True)) / len(merged)


def _task_report(setup, scored: dict[str, list[tuple[Any, int]]]) -> dict[str, dict]:
    """Per task, on the scored examples: agreement with the teacher, accuracy, the teacher's accuracy, and each
    example's outcome under both metrics."""
    report = {}
    for t, task in enumerate(setup.tasks):
        gold = [y for _, y in scored[task]]
        merged, teacher = _predictions(setup, t, "train")
        n = len(gold)
        agrees = [m == e for m, e in zip(merged, teacher, strict=True)]
        correct = [m == g for m, g in zip(merged, gold, strict=True)]
        report[task] = {"examples": n, "agreement": sum(agrees) / n, "accuracy": sum(correct) / n,
                        "teacher_accuracy": sum(e == g for e, g in zip(teacher, gold)) / n,
                        # per example, for the scored set's intervals (evaluation.learned_presets)
                        "outcomes": {"accuracy": correct, "agreement": agrees}}
    return report


def report_markdown(report: dict[str, dict]) -> str:
    lines = ["| task | examples | agreement with teacher | accuracy | teacher accuracy |", "|---|---|---|---|---|"]
    for task, r in report.items():
        lines.append(f"| {task} | {r['examples']} | {100 * r['agreement']:.1f} | {100 * r['accuracy']:.1f} | "
                     f"{100 * r['teacher_accuracy']:.1f} |")
    mean = {k: sum(r[k] for r in report.values()) / len(report) for k in ("agreement", "accuracy", "teacher_accuracy")}
    lines.append(f"| mean | | {100 * mean['agreement']:.1f} | {100 * mean['accuracy']:.1f} | "
                 f"{100 * mean['teacher_accuracy']:.1f} |")
    return "\n".join(lines)


def _preset(name: str):
    if name not in PRESETS:
        raise MergeLabError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def _input(row: dict, fields: tuple[str, ...]) -> Any:
    return row[fields[0]] if len(fields) == 1 else tuple(row[f] for f in fields)


def _hub_rows(task: GlueTask, per_task: int) -> tuple[list, list]:
    try:
        from datasets import load_dataset  # deferred: optional and heavy; only the Hub path of the preset reads GLUE
    except ImportError as e:
        raise MergeLabError("the glue-bert preset reads GLUE with the `datasets` package: pip install datasets, or "
                            "pass --preset-data DIR") from e
    data = load_dataset("nyu-mll/glue", task.name)
    train = [(_input(r, task.fields), int(r["label"])) for r in data["train"].select(range(per_task))]
    validation = [(_input(r, task.fields), int(r["label"])) for r in data[task.validation]]
    return train, validation


def _local_rows(root: Path, task: GlueTask) -> tuple[list, list]:
    path = root / f"{task.name}.jsonl"
    if not path.is_file():
        raise TaskSetError(f"--preset-data {root} has no {task.name}.jsonl: one JSONL per GLUE task")
    train, validation = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text = tuple(row["text"]) if isinstance(row["text"], list) else row["text"]
            item = (text, int(row["label"]))
            split = row["split"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise TaskSetError(f"{path.name}:{number} needs split, text (a string or [first, second]) and an "
                               "integer label") from None
        (train if split == "train" else validation).append(item)
    return train, validation
