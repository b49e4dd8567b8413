"""Task generators of the language-model family. Every answer has the form `答え: X`.

Tasks: math (a two-digit number plus or minus a one-digit one, Arabic numerals), japanese (kanji numerals 0-99 read into Arabic numbers),
strings (reverse a short lowercase word) and the composite japanese_math (arithmetic written with kanji numerals),
which needs both the math and the japanese skill and has no expert of its own.
The split between evaluation, unlabeled and training examples is fixed (SPLIT_SEED), independent of the build seed,
so the shipped task files stay valid for any rebuild.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

SPLIT_SEED = 20240611
ANSWER_PREFIX = "答え: "
KANJI_DIGITS = "零一二三四五六七八九"
LETTERS = string.ascii_lowercase[:12]  # a-l: reversal stays learnable for a tiny model in a minute
WORD_LENGTHS = (3, 4, 5)
EVAL_PER_TASK = 60
UNLABELED_PER_TASK = 256


@dataclass(frozen=True)
class LMExample:
    task: str
    prompt: str
    answer: str  # the full answer text, e.g. "答え: 7"
    expert: str | None


def kanji_number(n: int) -> str:
    """0-99 as kanji numerals: 7 -> 七, 10 -> 十, 37 -> 三十七, 0 -> 零."""
    if not 0 <= n <= 99:
        raise ValueError(f"kanji_number covers 0-99, got {n}")
    tens, units = divmod(n, 10)
    if tens == 0:
        return KANJI_DIGITS[units]
    head = ("" if tens == 1 else KANJI_DIGITS[tens]) + "十"
    return head + (KANJI_DIGITS[units] if units else "")


def answer(value: object) -> str:
    return f"{ANSWER_PREFIX}{value}"


def _arithmetic_facts() -> list[tuple[int, str, int, int]]:
    """(a, op, b, result) for a in 0-99 and b in 0-9; subtraction keeps results non-negative.
    Why not one-digit operands only: 155 facts are a lookup table, and a tiny model memorised the training facts
    without generalising to held-out ones (10-26 %); here every unit-digit fact recurs under ten tens digits, so
    held-out problems are new combinations of learnt pieces (100 % after 1200 steps)."""
    facts = [(a, "+", b, a + b) for a in range(100) for b in range(10)]
    facts += [(a, "-", b, a - b) for a in range(100) for b in range(min(a, 9) + 1)]
    return facts


def _math_pool() -> list[LMExample]:
    return [LMExample("math", f"{a}{op}{b}=", answer(r), "math") for a, op, b, r in _arithmetic_facts()]


def _japanese_math_pool() -> list[LMExample]:
    """Arithmetic in kanji numerals, without `±零`: a ± 0 is the operand a, so a model that restates the problem
    in digits and echoes it would be scored right without computing."""
    return [
        LMExample("japanese_math", f"{kanji_number(a)}{op}{kanji_number(b)}=", answer(r), None)
        for a, op, b, r in _arithmetic_facts() if b != 0
    ]


def _japanese_pool() -> list[LMExample]:
    return [LMExample("japanese", kanji_number(n), answer(n), "japanese") for n in range(100)]


def _reverse_example(rng: random.Random) -> LMExample:
    word = "".join(rng.choice(LETTERS) for _ in range(rng.choice(WORD_LENGTHS)))
    return LMExample("strings", f"reverse {word}", answer(word[::-1]), "strings")


@dataclass
class TaskSplit:
    """Held-out evaluation examples, unlabeled prompts (disjoint from evaluation) and a training sampler that never
    yields an evaluation prompt."""

    task: str
    evaluation: list[LMExample]
    unlabeled: list[str]
    train_pool: list[LMExample] | None  # finite tasks: every non-evaluation example; None: sampled (strings)

    def sample_train(self, rng: random.Random) -> LMExample:
        if self.train_pool is not None:
            return rng.choice(self.train_pool)
        held_out = {e.prompt for e in self.evaluation}
        while True:
            example = _reverse_example(rng)
            if example.prompt not in held_out:
                return example


def _split_finite(task: str, pool: list[LMExample], n_eval: int) -> TaskSplit:
    rng = random.Random(f"{SPLIT_SEED}:{task}")
    shuffled = pool[:]
    rng.shuffle(shuffled)
    evaluation, rest = shuffled[:n_eval], shuffled[n_eval:]
    unlabeled = [e.prompt for e in rest[:UNLABELED_PER_TASK]]
    return TaskSplit(task, sorted(evaluation, key=lambda e: e.prompt), unlabeled, rest)


def _split_strings() -> TaskSplit:
    rng = random.Random(f"{SPLIT_SEED}:strings")
    seen: dict[str, LMExample] = {}
    while len(seen) < EVAL_PER_TASK + UNLABELED_PER_TASK:
        example = _reverse_example(rng)
        seen.setdefault(example.prompt, example)
    examples = list(seen.values())
    return TaskSplit("strings", examples[:EVAL_PER_TASK], [e.prompt for e in examples[EVAL_PER_TASK:]], None)


def lm_splits() -> dict[str, TaskSplit]:
    """All four LM tasks. japanese holds only 100 numbers, so 40 are held out; japanese_math is never trained on,
    and the math expert never trains on the operand pairs of the composite's evaluation examples either (in any
    numerals), so the composite set is held out from every training stream."""
    splits = {
        "math": _split_finite("math", _math_pool(), EVAL_PER_TASK),
        "japanese": _split_finite("japanese", _japanese_pool(), 40),
        "strings": _split_strings(),
        "japanese_math": _split_finite("japanese_math", _japanese_math_pool(), EVAL_PER_TASK),
    }
    composite = held_out_facts(splits)
    math = splits["math"]
    math.train_pool = [e for e in math.train_pool if _fact_of(e.prompt) not in composite]
    return splits


def _fact_of(prompt: str) -> tuple[int, str, int]:
    """(a, op, b) of an arithmetic prompt in digits, kanji or both ("七十-6=" -> (70, "-", 6))."""
    body = prompt.rstrip("=")
    op = "+" if "+" in body else "-"
    left, right = body.split(op)
    return read_number(left), op, read_number(right)


def true_value(prompt: str) -> int:
    """What a numeric prompt of this family stands for, in digits, kanji or both: an arithmetic prompt's result
    ("七十-六=" -> 64) or the number a bare numeral names ("四十二" -> 42)."""
    if "+" not in prompt and "-" not in prompt:
        return read_number(prompt)
    a, op, b = _fact_of(prompt)
    return a + b if op == "+" else a - b


def read_number(text: str) -> int:
    """Arabic digits or kanji numerals 0-99 as an int (the inverse of kanji_number)."""
    if text.isdigit():
        return int(text)
    tens, _, units = text.rpartition("十")
    if "十" not in text:
        return KANJI_DIGITS.index(text)
    return 10 * (KANJI_DIGITS.index(tens) if tens else 1) + (KANJI_DIGITS.index(units) if units else 0)


def held_out_facts(splits: dict[str, TaskSplit]) -> set[tuple[int, str, int]]:
    """The (a, op, b) of every math and japanese_math evaluation example: no training stream may hold them."""
    return {_fact_of(e.prompt) for task in ("math", "japanese_math") for e in splits[task].evaluation}
