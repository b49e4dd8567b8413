"""The task files: held-out evaluation examples and unlabeled prompts, as JSONL (one example a line)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from .classifier_tasks import classifier_split
from .lm_tasks import lm_splits


def lm_records() -> tuple[list[dict], list[dict]]:
    """(evaluation, unlabeled) records of the LM family: {"task", "prompt", "answer", "expert"} and
    {"task", "prompt", "expert"}."""
    evaluation, unlabeled = [], []
    for task, split in lm_splits().items():
        evaluation += [asdict(e) for e in split.evaluation]
        expert = split.evaluation[0].expert
        unlabeled += [{"task": task, "prompt": p, "expert": expert} for p in split.unlabeled]
    return evaluation, unlabeled


def classifier_records() -> tuple[list[dict], list[dict]]:
    """(evaluation, unlabeled) records of the classifier family: {"task", "text", "label", "expert"} (label is the
    label name) and {"task", "text", "expert"}. Each classifier task is owned by the expert of the same name."""
    split = classifier_split()
    evaluation = [
        {"task": task, "text": s.text, "label": s.labels[task], "expert": task}
        for task, sentences in split.evaluation.items() for s in sentences
    ]
    unlabeled = [
        {"task": task, "text": text, "expert": task} for task, texts in split.unlabeled.items() for text in texts
    ]
    return evaluation, unlabeled


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_task_files(tasks_dir: Path) -> dict[str, Path]:
    """Writes the four task files; their content depends on no build seed, so rewriting them is idempotent."""
    paths = {}
    for family, (evaluation, unlabeled) in {"lm": lm_records(), "classifier": classifier_records()}.items():
        paths[family] = tasks_dir / f"zoo_{family}.jsonl"
        write_jsonl(paths[family], evaluation)
        write_jsonl(tasks_dir / f"zoo_{family}_unlabeled.jsonl", unlabeled)
    return paths
