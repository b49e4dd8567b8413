"""The optional "the reply must be in Japanese" rule end to end below the UI: a task file asks for it
(`"reply_language": "ja"`), the task carries it, and scoring reports `japanese_accuracy` beside the plain accuracy."""

from __future__ import annotations

import pytest

from evaluation.agreement import japanese_accuracy
from evaluation.scoring import TaskOutputs, expected_answers
from evaluation.tasks import tasks_from_records
from merging.errors import TaskSetError


def ja_task(reply_language="ja", on_line=0):
    records = [{"task": "t", "prompt": f"{n}+{n}は?", "answer": str(2 * n)} for n in (1, 2, 3, 4)]
    if reply_language is not None:
        records[on_line]["reply_language"] = reply_language
    return tasks_from_records(records).tasks["t"]


def test_one_line_asking_for_japanese_replies_sets_it_for_its_task():
    assert ja_task(on_line=2).reply_language == "ja"
    assert ja_task(None).reply_language is None


@pytest.mark.parametrize("value", ["en", "japanese", 1, ["ja"]])
def test_an_unknown_reply_language_is_refused_with_its_line(value):
    with pytest.raises(TaskSetError, match=r'line 1: "reply_language" must be "ja"'):
        ja_task(value)


def test_japanese_accuracy_counts_right_answers_only_in_japanese_replies():
    task = ja_task()
    raw = ["1足す1は2です。答え: 2",  # right, Japanese
           "The answer is 4. 答え: 4",  # right, English: does not count
           "3+3=7なので答えは7です。",  # wrong, Japanese
           "答え：８"]  # right, Japanese (full-width)
    ours = TaskOutputs(raw=raw, answers=["2", "4", "7", "8"])
    assert japanese_accuracy(task, ours, expected_answers(task)) == 0.5
    plain = sum(a == e for a, e in zip(ours.answers, expected_answers(task))) / 4
    assert plain == 0.75  # the plain accuracy counts the English reply


def test_tasks_that_do_not_ask_get_no_japanese_accuracy():
    task = ja_task(None)
    ours = TaskOutputs(raw=["答え: 2"] * 4, answers=["2"] * 4)
    assert japanese_accuracy(task, ours, expected_answers(task)) is None


def _score(name, japanese):
    from evaluation.agreement import TaskScore

    return TaskScore(task=name, expert=None, examples=4, agreement=None, accuracy=0.75, expert_accuracy=None,
                     normalized_accuracy=None, japanese_accuracy=japanese)


def test_results_show_the_japanese_reply_accuracy_as_its_own_column(tmp_path, capsys):
    from dataclasses import asdict

    from evaluation.cli import _print_scores
    from evaluation.results import CSV_COLUMNS, score_rows

    scores = {"ja_gsm": _score("ja_gsm", 0.5), "other": _score("other", None)}
    rows = score_rows({"tasks": {n: asdict(s) for n, s in scores.items()}})
    column = CSV_COLUMNS.index("japanese_accuracy")
    assert [row[column] for row in rows] == [0.5, None]
    _print_scores(scores)
    header, ja_line, other_line = capsys.readouterr().out.splitlines()
    assert header.split()[-2:] == ["ja", "replies"] and ja_line.split() == ["ja_gsm", "-", "-", "75.0%", "-", "50.0%"]
    assert other_line.split()[-1] == "-"
    _print_scores({"other": _score("other", None)})  # no task asks: no column
    assert "ja replies" not in capsys.readouterr().out
