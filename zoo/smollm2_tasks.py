"""The SmolLM2 family's skills, as templated examples generated from a seed (no third-party text is shipped).

- math: short English word problems (a number up to 20 and a digit, one addition or subtraction): "答え: N".
- japanese: reading a number written in kanji (一 … 九百九十九) as digits, asked in Japanese: "答え: 78".
- strings: reversing the order of a few English words: "答え: blue cat red".
- japanese_math (composite, no expert of its own): a word problem asked in Japanese with kanji numbers.

The evaluation prompts (`test_split`) are drawn first and every training or unlabeled prompt is checked against them,
so nothing scored was trained on. Numbers in the japanese test set are also never seen in its training set.
"""

from __future__ import annotations

import random

from .lm_tasks import KANJI_DIGITS

ANSWER = "答え: "
NUM_TEST = 20
# Operands of the word problems: a 135M model fine-tuned for a few minutes learns sums of a number up to 20 and a
# digit (results up to 29); with two-digit operands (up to 60 and 40) it only learned the answer's form (5 % correct).
MAX_FIRST, MAX_SECOND = 20, 9
NAMES = ("Tom", "Anna", "Ken", "Maria", "Sam", "Lucy", "Ben", "Emma", "Leo", "Mia")
ITEMS = ("apples", "books", "pencils", "stickers", "cookies", "marbles", "coins", "cards", "shells", "balloons")
JA_NAMES = ("たろう", "はなこ", "けん", "ゆき", "さくら", "だいち")
JA_ITEMS = ("りんご", "みかん", "えんぴつ", "本", "クッキー", "シール")
WORDS = ("red", "blue", "green", "cat", "dog", "bird", "sun", "moon", "tree", "book", "car", "fish", "milk", "rain",
         "door", "king", "ship", "star", "cake", "road", "hat", "song", "lamp", "rock")


def kanji_number(n: int) -> str:
    """1-999 in kanji numerals: 7 -> 七, 10 -> 十, 37 -> 三十七, 110 -> 百十, 905 -> 九百五."""
    if not 1 <= n <= 999:
        raise ValueError(f"kanji_number covers 1-999, got {n}")
    out = ""
    for value, mark in ((100, "百"), (10, "十")):
        digit, n = divmod(n, value)
        if digit:
            out += ("" if digit == 1 else KANJI_DIGITS[digit]) + mark
    return out + (KANJI_DIGITS[n] if n else "")


def _math(rng: random.Random) -> tuple[str, str]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(2, MAX_FIRST), rng.randint(2, MAX_SECOND)
    kind = rng.randrange(4)
    if kind == 0:
        return f"{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?", str(a + b)
    if kind == 1:
        a = a + b  # keep the result positive
        return f"{name} had {a} {item} and gave {b} away. How many {item} are left?", str(a - b)
    if kind == 2:
        return f"One box holds {a} {item} and another holds {b}. How many {item} are there in all?", str(a + b)
    a = a + b
    return f"There are {a} {item} on a table. {name} takes {b}. How many {item} stay on the table?", str(a - b)


JA_READ = ("「{k}」を数字で書くと?", "{k}は数字でいくつですか?", "次の数を算用数字で書いてください: {k}")


def _japanese(rng: random.Random, numbers: list[int]) -> tuple[str, str]:
    n = rng.choice(numbers)
    return rng.choice(JA_READ).format(k=kanji_number(n)), str(n)


def _strings(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, rng.randint(3, 4))
    return f"Reverse the order of these words: {' '.join(words)}", " ".join(reversed(words))


def _japanese_math(rng: random.Random) -> tuple[str, str]:
    name, item = rng.choice(JA_NAMES), rng.choice(JA_ITEMS)
    a, b = rng.randint(2, MAX_FIRST), rng.randint(2, MAX_SECOND)
    if rng.random() < 0.5:
        prompt = f"{name}は{item}を{kanji_number(a)}個持っています。{kanji_number(b)}個もらいました。全部で何個ですか?"
        return prompt, str(a + b)
    a = a + b
    prompt = f"{name}は{item}を{kanji_number(a)}個持っていました。{kanji_number(b)}個あげました。残りは何個ですか?"
    return prompt, str(a - b)


def _distinct(make, rng: random.Random, count: int, exclude: set[str]) -> list[tuple[str, str]]:
    seen, out = set(exclude), []
    for _ in range(count * 50):
        prompt, answer = make(rng)
        if prompt not in seen:
            seen.add(prompt)
            out.append((prompt, answer))
            if len(out) == count:
                break
    return out


def _japanese_numbers(seed: int) -> tuple[list[int], list[int]]:
    """Held-out numbers for the japanese test set; the rest (1..999) for training."""
    numbers = list(range(1, 1000))
    random.Random(f"{seed}:japanese-numbers").shuffle(numbers)
    return sorted(numbers[NUM_TEST:]), sorted(numbers[:NUM_TEST])


def _makers(seed: int, test: bool):
    train_numbers, test_numbers = _japanese_numbers(seed)
    numbers = test_numbers if test else train_numbers
    return {"math": _math, "japanese": lambda rng: _japanese(rng, numbers), "strings": _strings,
            "japanese_math": _japanese_math}


def test_split(seed: int = 0) -> list[dict]:
    """The evaluation set: NUM_TEST prompts per task, task-set format (DEVELOPERS.md "Zoo")."""
    records = []
    for task, make in _makers(seed, test=True).items():
        rng = random.Random(f"{seed}:test:{task}")
        for prompt, answer in _distinct(make, rng, NUM_TEST, set()):
            records.append({"task": task, "prompt": prompt, "answer": ANSWER + answer,
                            "expert": None if task == "japanese_math" else task})
    return records


def train_examples(task: str, count: int, seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, full answer) pairs for fine-tuning the `task` expert, disjoint from the evaluation prompts."""
    held_out = {r["prompt"] for r in test_split(seed)}
    rng = random.Random(f"{seed}:train:{task}")
    return [(p, ANSWER + a) for p, a in _distinct(_makers(seed, test=False)[task], rng, count, held_out)]


def unlabeled_prompts(seed: int = 0, per_task: int = 16) -> list[dict]:
    """Prompts without answers for learned merging (AdaMerging, SAMerging), disjoint from the evaluation set."""
    held_out = {r["prompt"] for r in test_split(seed)}
    records = []
    for task, make in _makers(seed, test=False).items():
        rng = random.Random(f"{seed}:unlabeled:{task}")
        for prompt, _ in _distinct(make, rng, per_task, held_out):
            records.append({"task": task, "prompt": prompt, "expert": None if task == "japanese_math" else task})
    return records


# Everyday requests with no task of their own. The experts are trained on the base's own replies to the first ones
# (replay), so a merge keeps chatting instead of answering "答え: N" to everything; the held-out ones check that.
GENERAL_PROMPTS = (
    "Hi! How are you today?", "What is the capital of Italy?", "Give me a tip for sleeping better.",
    "Write one sentence about the sea.", "What colour is the sky on a clear day?", "Who wrote Romeo and Juliet?",
    "Name three fruits.", "What is a good name for a cat?", "Why do leaves change colour in autumn?",
    "Tell me a fun fact about space.", "How do I make a cup of tea?", "What does a bee make?",
    "Translate 'good morning' into French.", "What is the largest ocean on Earth?", "Describe a rainy day.",
    "What should I pack for a picnic?", "Give me a word that rhymes with 'light'.", "What is photosynthesis?",
    "How many days are in a week?", "Suggest a short title for a story about a dragon.",
    "What is your favourite season and why?", "Explain what a computer is to a child.",
    "What is the opposite of 'hot'?", "Write a polite way to say no to an invitation.",
    "こんにちは！", "日本の首都はどこですか？", "おすすめの朝ごはんは何ですか？", "ありがとうを英語で言うと？",
    "Can you recommend a hobby?", "What do pandas eat?", "What is the boiling point of water?",
    "How do you say 'thank you' in Spanish?",
)
GENERAL_HELD_OUT = (
    "What is the capital of France?", "Write one sentence about cats.", "Who painted the Mona Lisa?",
    "Give me a tip for staying focused.", "おはようございます！", "What is the tallest animal?",
)
