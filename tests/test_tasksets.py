"""evaluation.tasks: JSONL task sets, validation messages that name the line and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.tasks import load_tasks, tasks_from_records
from merging.errors import MergeLabError, TaskSetError

ROOT = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "tasks.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _rows(*records: dict) -> list[str]:
    return [json.dumps(r, ensure_ascii=False) for r in records]


def test_load_groups_examples_by_task(tmp_path):
    path = _write(tmp_path, _rows(
        {"task": "math", "prompt": "1+2=", "answer": "3", "expert": "math"},
        {"task": "strings", "prompt": "reverse abc", "answer": "cba", "expert": "strings"},
        {"task": "math", "prompt": "2+2=", "answer": 4, "expert": "math"},
        {"task": "ja_math", "prompt": "一+二=", "answer": "3", "expert": None},
    ) + [""])
    tasks = load_tasks(path)
    assert len(tasks) == 4
    assert tasks.task_names == ["math", "strings", "ja_math"]
    assert tasks.tasks["math"].inputs == ["1+2=", "2+2="]
    assert tasks.tasks["math"].numeric and not tasks.tasks["strings"].numeric
    assert tasks.tasks["ja_math"].expert is None
    assert tasks.experts == ["math", "strings"]
    assert tasks.limited(1).tasks["math"].inputs == ["1+2="]


def test_classification_examples_and_optional_fields(tmp_path):
    path = _write(tmp_path, _rows(
        {"task": "sentiment", "text": "good", "label": 1, "expert": "sentiment"},
        {"task": "sentiment", "text": "bad", "expert": "sentiment"},
        {"task": "free", "prompt": "say hi", "answer_type": "text", "max_new_tokens": 9},
    ))
    tasks = load_tasks(path)
    sentiment = tasks.tasks["sentiment"]
    assert sentiment.is_classification and sentiment.answers == [1, None] and not sentiment.has_answers
    assert tasks.tasks["free"].max_new_tokens == 9 and not tasks.tasks["free"].numeric
    assert tasks.tasks["free"].expert is None  # a missing expert means a composite task


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"task": "math", "prompt": "1+2=", ', r"tasks.jsonl:2: not valid JSON"),
        ('["math", "1+2="]', r"line 2: expected a JSON object"),
        ('{"prompt": "1+2=", "answer": "3"}', r'line 2: missing field "task"'),
        ('{"task": "math", "answer": "3"}', r'line 2: give exactly one of "prompt"'),
        ('{"task": "math", "prompt": "1+2=", "text": "x"}', r'line 2: give exactly one of "prompt"'),
        ('{"task": "math", "prompt": 12}', r'line 2: "prompt" must be a non-empty string'),
        ('{"task": "", "prompt": "1+2="}', r'line 2: "task" must be a non-empty string'),
        ('{"task": "math", "prompt": "1+2=", "answer": [3]}', r'line 2: "answer" must be a string or a number'),
        ('{"task": "math", "prompt": "1+2=", "answer": true}', r'line 2: "answer" must be a string or a number'),
        ('{"task": "s", "text": "ok", "label": 1.5}', r'line 2: "label" must be an integer'),
        ('{"task": "math", "prompt": "1+2=", "expert": 3}', r'line 2: "expert" must be'),
        ('{"task": "math", "prompt": "1+2=", "label": 1}', r'line 2: "label" belongs with "text"'),
        ('{"task": "math", "prompt": "1+2=", "max_new_tokens": 0}', r'line 2: "max_new_tokens" must be a positive'),
        ('{"task": "math", "prompt": "1+2=", "expert": "strings"}', r'line 2: task "math" has expert'),
        ('{"task": "math", "text": "1+2=", "expert": "math"}', r'line 2: task "math" mixes "prompt" and "text"'),
        ('{"task": "m", "prompt": "1+2=", "answer_type": "equations"}',
         r'line 2: "answer_type" must be "number", "text" or "equation".*not \'equations\''),
        ('{"task": "m", "prompt": "1+2=", "answer": "three", "answer_type": "equation"}',
         r'line 2: "answer_type" is "equation" but the answer \'three\' is not a number'),
        ('{"task": "math", "prompt": "1+2=", "answer": "3", "expert": "math", "answer_type": "equation"}',
         r'line 2: task "math" has "answer_type" "equation" here but "number" on line 1; use one answer type a task'),
    ],
)
def test_bad_lines_name_the_line_and_the_problem(tmp_path, line, message):
    path = _write(tmp_path, _rows({"task": "math", "prompt": "3+4=", "answer": "7", "expert": "math",
                                   "answer_type": "number"}) + [line])
    with pytest.raises(TaskSetError, match=message):
        load_tasks(path)


def test_answer_types_declared_or_inferred(tmp_path):
    """One answer type a task: declared on one line it holds for every line; undeclared it is inferred (number
    when every known answer is a number or none is known, else text), never "equation"."""
    tasks = load_tasks(_write(tmp_path, _rows(
        {"task": "sums", "prompt": "14+5=", "answer": "答え: 19", "answer_type": "equation"},
        {"task": "sums", "prompt": "十四+五=", "answer": 19},
        {"task": "plain", "prompt": "14+5=", "answer": "19"},
        {"task": "words", "prompt": "reverse ab", "answer": "ba"},
        {"task": "open", "prompt": "say hi"},
    )))
    kinds = {name: (task.answer_type, task.numeric) for name, task in tasks.tasks.items()}
    assert kinds == {"sums": ("equation", True), "plain": ("number", True), "words": ("text", False),
                     "open": ("number", True)}


def test_empty_task_set_is_an_error(tmp_path):
    with pytest.raises(TaskSetError, match="empty"):
        load_tasks(_write(tmp_path, ["", "   "]))
    with pytest.raises(TaskSetError, match="empty"):
        tasks_from_records([])


def test_missing_file_says_so(tmp_path):
    with pytest.raises(MergeLabError, match="does not exist"):
        load_tasks(tmp_path / "nope.jsonl")


def test_bundled_ja_math_set_is_valid_and_original_in_style():
    tasks = load_tasks(ROOT / "assets" / "tasks" / "ja_math.jsonl")
    task = tasks.tasks["ja_math"]
    assert tasks.task_names == ["ja_math"] and task.expert is None
    assert len(task.examples) >= 30 and task.has_answers and task.numeric
    assert all(any("\u3040" <= ch <= "\u9fff" for ch in e.input) for e in task.examples)  # posed in Japanese
    assert len(set(task.inputs)) == len(task.inputs)
    assert task.max_new_tokens == 256  # room for a real model's working before its answer


def test_tasks_for_experts_keeps_their_tasks_and_composites():
    from evaluation.tasks import tasks_for_experts

    tasks = tasks_from_records([{"task": "a", "prompt": "1", "expert": "math"},
                                {"task": "b", "prompt": "2", "expert": "japanese"},
                                {"task": "c", "prompt": "3", "expert": None}])
    assert tasks_for_experts(tasks, ["math"]).task_names == ["a", "c"]
    only = tasks_from_records([{"task": "a", "prompt": "1", "expert": "math"}], source="t.jsonl")
    with pytest.raises(TaskSetError, match=r"No task in t.jsonl belongs to the recipe's models \(strings\)"):
        tasks_for_experts(only, ["strings"], whose="the recipe's models")
