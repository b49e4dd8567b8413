"""Task sets: JSONL files, one example a line, in the zoo's format (DEVELOPERS.md "Zoo"):

    {"task": "math", "prompt": "3+4=", "answer": "7", "expert": "math"}
    {"task": "sentiment", "text": "a fine film", "label": 1, "expert": "sentiment"}

`prompt` examples are generated and scored by their extracted answer; `text` examples are classified. `answer` /
`label` may be left out where unknown (agreement with the expert still works). `expert` names the expert that owns
the task, null (or left out) for a composite task. Optional: `answer_type` ("number" | "text"; by default inferred
from the answers, numbers when none are known) and `max_new_tokens` (a per-task generation limit).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluation.answers import is_numeric_answer
from merging.errors import TaskSetError


@dataclass(frozen=True)
class Example:
    task: str
    input: str  # the prompt (generation) or the text (classification)
    is_classification: bool
    answer: Any = None  # expected answer (prompts) or label (texts), None where unknown
    expert: str | None = None
    line: int = 0
    max_new_tokens: int | None = None
    answer_type: str | None = None


@dataclass(frozen=True)
class Task:
    """All examples of one task, with what scoring needs to know about them."""

    name: str
    examples: tuple[Example, ...]
    expert: str | None
    is_classification: bool
    numeric: bool  # compare answers as numbers (else as text); unused for classification
    max_new_tokens: int | None  # from the file, else derived from the answers by the scorer

    @property
    def inputs(self) -> list[str]:
        return [e.input for e in self.examples]

    @property
    def answers(self) -> list[Any]:
        return [e.answer for e in self.examples]

    @property
    def has_answers(self) -> bool:
        return all(e.answer is not None for e in self.examples)


@dataclass
class TaskSet:
    examples: list[Example]
    source: str = "<memory>"
    tasks: dict[str, Task] = field(init=False)

    def __post_init__(self) -> None:
        if not self.examples:
            raise TaskSetError(f"{self.source}: the task set is empty; add at least one example (one JSON object a line).")
        self.tasks = _group(self.examples, self.source)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    @property
    def experts(self) -> list[str]:
        """Experts named by the tasks, in order of first appearance."""
        return list(dict.fromkeys(t.expert for t in self.tasks.values() if t.expert is not None))

    def limited(self, per_task: int | None) -> TaskSet:
        """The first `per_task` examples of each task (all of them for None)."""
        if per_task is None:
            return self
        kept = [e for t in self.tasks.values() for e in t.examples[:per_task]]
        return TaskSet(kept, source=self.source)


def _fail(source: str, line: int, what: str) -> TaskSetError:
    return TaskSetError(f"{source}, line {line}: {what}")


def _check_type(source: str, line: int, record: dict, key: str, types: tuple, what: str) -> None:
    value = record.get(key)
    if value is not None and (not isinstance(value, types) or isinstance(value, bool) and bool not in types):
        raise _fail(source, line, f'"{key}" must be {what}, not {type(value).__name__} ({value!r}).')


def parse_record(record: Any, line: int, source: str = "<memory>") -> Example:
    """One validated example; errors name the line and the field."""
    if not isinstance(record, dict):
        raise _fail(source, line, f"expected a JSON object like {{\"task\": ..., \"prompt\": ...}}, got {type(record).__name__}.")
    if "task" not in record:
        raise _fail(source, line, 'missing field "task" (the name of the task this example belongs to).')
    if not isinstance(record["task"], str) or not record["task"].strip():
        raise _fail(source, line, '"task" must be a non-empty string.')
    has_prompt, has_text = "prompt" in record, "text" in record
    if has_prompt == has_text:
        raise _fail(source, line, 'give exactly one of "prompt" (generated answers) or "text" (classification).')
    key = "prompt" if has_prompt else "text"
    if not isinstance(record[key], str) or not record[key]:
        raise _fail(source, line, f'"{key}" must be a non-empty string.')
    if has_prompt and "label" in record:
        raise _fail(source, line, '"label" belongs with "text" examples; a "prompt" example takes "answer".')
    if has_text and "answer" in record:
        raise _fail(source, line, '"answer" belongs with "prompt" examples; a "text" example takes "label".')
    _check_type(source, line, record, "answer", (str, int, float), "a string or a number")
    _check_type(source, line, record, "label", (int, str), "an integer label id or a label name")
    _check_type(source, line, record, "expert", (str,), "the expert's name (a string) or null")
    _check_type(source, line, record, "max_new_tokens", (int,), "a positive integer")
    if record.get("max_new_tokens") is not None and record["max_new_tokens"] < 1:
        raise _fail(source, line, '"max_new_tokens" must be a positive integer.')
    if record.get("answer_type") not in (None, "number", "text"):
        raise _fail(source, line, '"answer_type" must be "number" or "text".')
    return Example(
        task=record["task"].strip(), input=record[key], is_classification=has_text,
        answer=record.get("answer" if has_prompt else "label"), expert=record.get("expert"), line=line,
        max_new_tokens=record.get("max_new_tokens"), answer_type=record.get("answer_type"),
    )


def _group(examples: Iterable[Example], source: str) -> dict[str, Task]:
    by_task: dict[str, list[Example]] = {}
    for example in examples:
        by_task.setdefault(example.task, []).append(example)
    tasks = {}
    for name, items in by_task.items():
        first = items[0]
        for e in items[1:]:
            if e.expert != first.expert:
                raise _fail(source, e.line, f'task "{name}" has expert {e.expert!r} here but {first.expert!r} on line '
                            f"{first.line}; one task belongs to one expert (null for a composite).")
            if e.is_classification != first.is_classification:
                raise _fail(source, e.line, f'task "{name}" mixes "prompt" and "text" examples; use one kind a task.')
        tasks[name] = Task(
            name=name, examples=tuple(items), expert=first.expert, is_classification=first.is_classification,
            numeric=_numeric(items), max_new_tokens=max((e.max_new_tokens or 0) for e in items) or None,
        )
    return tasks


def _numeric(items: list[Example]) -> bool:
    declared = {e.answer_type for e in items if e.answer_type}
    if declared:
        return declared == {"number"}
    known = [e.answer for e in items if e.answer is not None]
    return all(is_numeric_answer(a) for a in known)


def load_tasks(path: str | Path) -> TaskSet:
    """Read and validate a JSONL task file."""
    file = Path(path)
    if not file.is_file():
        raise TaskSetError(f"Task file {str(file)!r} does not exist: give a .jsonl file, one example a line.")
    examples = []
    with file.open(encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as error:
                raise _fail(file.name, number, f"not valid JSON ({error.msg} at column {error.colno}).") from None
            examples.append(parse_record(record, number, file.name))
    return TaskSet(examples, source=file.name)


def tasks_from_records(records: Iterable[dict], source: str = "<memory>") -> TaskSet:
    """A TaskSet from already-parsed records (line numbers count from 1)."""
    return TaskSet([parse_record(r, i, source) for i, r in enumerate(records, start=1)], source=source)
