"""Task sets: JSONL files, one example a line, in the zoo's format (DEVELOPERS.md "Zoo"):

    {"task": "math", "prompt": "3+4=", "answer": "7", "expert": "math"}
    {"task": "sentiment", "text": "a fine film", "label": 1, "expert": "sentiment"}

`prompt` examples are generated and scored by their extracted answer; `text` examples are classified. `answer` /
`label` may be left out where unknown (agreement with the expert still works). `expert` names the expert that owns
the task, null (or left out) for a composite task. Optional: `answer_type` ("number" | "text" | "equation"; by
default number or text, inferred from the answers, numbers when none are known; "equation" for prompts that are an
expression ending in "=", replied to as "14+5=19": the number right after the reply's first "=", compared as a
number; evaluation.answers describes each rule; one answer type a task, declared on one line or on all of them),
`max_new_tokens` (a generation limit) and `stop` (a string or a list
of strings that end an answer, e.g. "\n\n") and `reply_language` ("ja": an answer also counts in `japanese_accuracy`
only when the reply is in Japanese, as Sakana counts MGSM-JA). A task takes the largest `max_new_tokens`, every `stop`
and any `reply_language` of its lines, so writing them on one line of a task sets them for the whole task.

Files are bounded (hosted users share one server): merging.jsonl's MAX_FILE_BYTES, MAX_LINES lines and MAX_LINE_BYTES a line;
prompts longer than a model's context are cut at generation time (inference.generation.fit_prompt).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluation.answers import ANSWER_TYPES, NUMERIC_TYPES, is_numeric_answer
from merging.errors import TaskSetError
from merging.jsonl import read_jsonl  # one set of limits for every upload path

MAX_NEW_TOKENS = 4096
MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 64
REPLY_LANGUAGES = (None, "ja")  # the languages a reply can be checked for (evaluation.answers.is_japanese_reply)


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
    stop: tuple[str, ...] = ()
    reply_language: str | None = None  # "ja": replies must be in Japanese to count in japanese_accuracy


@dataclass(frozen=True)
class Task:
    """All examples of one task, with what scoring needs to know about them."""

    name: str
    examples: tuple[Example, ...]
    expert: str | None
    is_classification: bool
    answer_type: str  # how replies are read: "number" | "text" | "equation" (ANSWER_TYPES); unused for classification
    max_new_tokens: int | None  # from the file, else derived from the answers by the scorer
    stop: tuple[str, ...] = ()  # strings that end an answer (besides eos), from the file
    reply_language: str | None = None  # "ja": also scored counting Japanese replies only (agreement.japanese_accuracy)

    @property
    def numeric(self) -> bool:
        """Whether answers compare as numbers (the number and equation types), else as text."""
        return self.answer_type in NUMERIC_TYPES

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
    if record.get("max_new_tokens") is not None and record["max_new_tokens"] > MAX_NEW_TOKENS:
        raise _fail(source, line, f'"max_new_tokens" is {record["max_new_tokens"]}; the most is {MAX_NEW_TOKENS}.')
    _check_answer_type(record, has_prompt, source, line)
    if record.get("reply_language") not in REPLY_LANGUAGES:
        raise _fail(source, line, '"reply_language" must be "ja" (replies must be in Japanese) or null.')
    return Example(
        task=record["task"].strip(), input=record[key], is_classification=has_text,
        answer=record.get("answer" if has_prompt else "label"), expert=record.get("expert"), line=line,
        max_new_tokens=record.get("max_new_tokens"), answer_type=record.get("answer_type"),
        stop=_stop_strings(record.get("stop"), source, line), reply_language=record.get("reply_language"),
    )


def _check_answer_type(record: dict, has_prompt: bool, source: str, line: int) -> None:
    """`answer_type` is one of ANSWER_TYPES; a numeric one (number, equation) needs a numeric answer where given."""
    declared = record.get("answer_type")
    if declared is None:
        return
    if declared not in ANSWER_TYPES:
        raise _fail(source, line, f'"answer_type" must be "number", "text" or "equation" (the number right after the '
                    f'reply\'s first "="), not {declared!r}.')
    answer = record.get("answer")
    if has_prompt and declared in NUMERIC_TYPES and answer is not None and not is_numeric_answer(answer):
        raise _fail(source, line, f'"answer_type" is "{declared}" but the answer {answer!r} is not a number: write '
                    'the number (e.g. "answer": "19" or "答え: 19"), or use "answer_type": "text".')


def _stop_strings(value: Any, source: str, line: int) -> tuple[str, ...]:
    """`stop` as a tuple: a non-empty string or a list of them (at most MAX_STOP_STRINGS, each short)."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if (not isinstance(items, list) or not items or len(items) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in items)):
        raise _fail(source, line, f'"stop" must be a non-empty string or a list of 1 to {MAX_STOP_STRINGS} of them, '
                    f'each at most {MAX_STOP_CHARS} characters (e.g. "stop": ["\\n\\n"]).')
    return tuple(items)


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
            answer_type=_answer_type(items, name, source), max_new_tokens=max((e.max_new_tokens or 0) for e in items) or None,
            stop=tuple(dict.fromkeys(s for e in items for s in e.stop)),
            reply_language=next((e.reply_language for e in items if e.reply_language), None),
        )
    return tasks


def _answer_type(items: list[Example], name: str, source: str) -> str:
    """The task's declared answer type (one for the whole task), else "number" when every known answer is a number
    (or none is known) and "text" otherwise."""
    declared = [e for e in items if e.answer_type]
    for e in declared[1:]:
        if e.answer_type != declared[0].answer_type:
            raise _fail(source, e.line, f'task "{name}" has "answer_type" "{e.answer_type}" here but '
                        f'"{declared[0].answer_type}" on line {declared[0].line}; use one answer type a task.')
    if declared:
        return declared[0].answer_type
    known = [e.answer for e in items if e.answer is not None]
    return "number" if all(is_numeric_answer(a) for a in known) else "text"


def load_tasks(path: str | Path) -> TaskSet:
    """Read and validate a JSONL task file, within the limits every upload path shares (merging.jsonl.read_jsonl:
    the file's size before any of it is read, then each line's length, the line count and JSON nesting as it is
    read); each line is then checked as a task example (parse_record)."""
    file = Path(path)
    if not file.is_file():
        raise TaskSetError(f"Task file {str(file)!r} does not exist: give a .jsonl file, one example a line.")
    examples = [parse_record(record, number, file.name) for number, record in read_jsonl(file, file.name)]
    return TaskSet(examples, source=file.name)


def tasks_for_experts(tasks: TaskSet, experts: Iterable[str], *, whose: str = "the chosen sources") -> TaskSet:
    """Only the tasks owned by one of `experts`, and composite tasks (expert null): what a merge of those experts
    can be scored on. `whose` names the experts in the error when no task is left."""
    names = set(experts)
    kept = [e for e in tasks.examples if e.expert is None or e.expert in names]
    if not kept:
        raise TaskSetError(f"No task in {tasks.source} belongs to {whose} ({', '.join(sorted(names))}) or is "
                           "composite: set each line's \"expert\" to one of them, or null for a task of none.")
    return TaskSet(kept, source=tasks.source)


def tasks_from_records(records: Iterable[dict], source: str = "<memory>") -> TaskSet:
    """A TaskSet from already-parsed records (line numbers count from 1)."""
    return TaskSet([parse_record(r, i, source) for i, r in enumerate(records, start=1)], source=source)
