"""The homework's Japanese GSM-style task set (assets/tasks/ja_gsm.jsonl): the shipped file is the generator's output,
and every answer is re-derived here from the numbers the question states, by formulas written independently of the
generator's."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

from evaluation import ja_gsm
from evaluation.answers import expected_answer, is_japanese_reply
from evaluation.tasks import load_tasks

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "tasks" / "ja_gsm.jsonl"

# template -> the answer from the question's numbers, in the order the question states them
FROM_NUMBERS = {
    "change_after_shopping": lambda n: n[5] - n[1] * n[2] - n[3],  # 1個P円 … C個 … E円 … 1つ … Y円札
    "study_hours": lambda n: Fraction(n[0] * n[2] * n[3], 60),  # 週にD日、1日M分 … W週間
    "cyclists_in_class": lambda n: n[0] - Fraction(n[0] * n[1], 100) - n[2],
    "distance_travelled": lambda n: n[0] * (n[1] + Fraction(n[2], 60)),
    "savings_left": lambda n: n[0] + n[1] * n[2] - n[3],
    "days_to_finish_book": lambda n: Fraction(n[0] - 3 * n[2], n[6]),  # 1日目にF、2日目にその2倍 … 3日目から毎日R
    "cake_profit": lambda n: (n[2] - n[5]) * n[4] - n[2] * n[1],
    "years_until_double": lambda n: n[0] - 2 * n[1],  # (P + t) = 2(C + t)
    "pencils_each": lambda n: Fraction(12 * n[0] - n[2], n[1]),
    "seedlings_left": lambda n: n[0] * n[1] * n[3] - n[4],
    "minutes_to_fill": lambda n: Fraction(n[0] - n[1], n[2]),
    "price_after_discount": lambda n: Fraction(n[0] * (100 - n[1]), 100) - n[2],
}


def test_the_shipped_file_is_the_generator_s_output():
    assert SHIPPED.read_text(encoding="utf-8") == ja_gsm.file_text()


def test_every_answer_follows_from_the_numbers_in_its_question():
    assert {t.__name__ for t in ja_gsm.TEMPLATES} == set(FROM_NUMBERS)
    for seed in (ja_gsm.SEED, 1, 2):
        problems = ja_gsm.problems(seed)
        for index, (question, answer) in enumerate(problems):
            template = ja_gsm.TEMPLATES[index // ja_gsm.PER_TEMPLATE].__name__
            numbers = [int(n) for n in re.findall(r"\d+", question)]
            derived = FROM_NUMBERS[template](numbers)
            assert derived == answer and derived > 0 and Fraction(derived).denominator == 1, (template, question)


def test_the_task_set_loads_as_one_numeric_japanese_task():
    tasks = load_tasks(SHIPPED)
    task = tasks.tasks[ja_gsm.TASK]
    assert tasks.task_names == [ja_gsm.TASK] and task.expert is None and task.numeric and task.has_answers
    assert len(task.examples) == len(ja_gsm.TEMPLATES) * ja_gsm.PER_TEMPLATE >= 36
    assert len(set(task.inputs)) == len(task.inputs)
    assert all(is_japanese_reply(prompt) for prompt in task.inputs)  # posed in Japanese
    assert all(expected_answer(a, "number") == str(a) for a in task.answers)
    assert task.max_new_tokens == ja_gsm.MAX_NEW_TOKENS
