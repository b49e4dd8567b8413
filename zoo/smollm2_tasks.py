"""The SmolLM2 family's skills, as templated examples generated from a seed (no third-party text is shipped).

The experts are built so that a merge can chain them in its own reply (design I, docs/zoo.md "Composition designs
tried"), which neither expert can do alone:

- math: a digit expression, restated with its result: `14+5=` -> `14+5=19` (a number 2-20 and a digit, + or -).
- japanese: kanji numerals rewritten as digits in place, inside any text, and nothing more:
  `十四+五` -> `14+5`; its task is reading a number (1-999): `「六百二十三」を数字で書くと?` -> `「623」を数字で書くと?`,
  read as the reply's last number.
- strings: reversing the order of a few English words: "答え: blue cat red".
- japanese_math (composite, no expert of its own): the math expression in kanji, `十四+五=`. The japanese expert
  rewrites it (`14+5=`) and stops; the math expert cannot read it; a merge that does both writes `14+5=19`.

math and japanese_math are read as equations (evaluation answer type "equation": the number right after the reply's
first `=`), so a chatty reply that happens to end on the right number does not count.

Splits, drawn before any training data: a test split (`test_split`, the family's tasks.jsonl) and a validation
split (`validation_split`, validation.jsonl: choose recipes there, report the test split), PER_SPLIT prompts a
numeric task each. Every test and validation operand pair is left out of both experts' training in either numerals,
the japanese task's held-out numbers are never written in kanji in training, and no composite problem is trained on.

`design` and `form` name the variants measured in docs/zoo.md (bench/composition_smollm2.py); the family trains the
japanese expert on "eos2" and the math expert on "result" with the other tens up to WIDE.
"""

from __future__ import annotations

import random

from .lm_tasks import KANJI_DIGITS

ANSWER = "答え: "
PER_SPLIT = 40  # held-out prompts per numeric task and split
NUM_STRINGS = 20  # held-out strings prompts
FIRST, SECOND = (2, 20), (2, 9)  # operands: a number up to 20 and a digit (a 135M model learns these in minutes)
WIDE = 99  # the math expert also trains on a + digit for a up to this: the same carries on other tens
# Generation limits: `14+5=19` is 8 tokens with its end; a rewrite in place needs the tokens up to the number.
MAX_NEW_TOKENS = {"math": 16, "japanese": 12, "japanese_math": 16}
EQUATION_TASKS = ("math", "japanese_math")
# The japanese questions, number first: a rewrite in place needs no more tokens than reach the number.
JA_READ = ("「{k}」を数字で書くと?", "{k}は数字でいくつですか?", "{k}を算用数字で書いてください。")
SENTENCES = ("りんごが{0}個あります。", "{0}人の子どもが公園で遊んでいます。", "この本は{0}ページあります。",
             "電車は{0}分後に来ます。", "{0}円のパンを買いました。", "けんは本を{0}冊、ノートを{1}冊持っています。",
             "駅まで{0}メートル歩きます。", "ねこが{0}ひき、いぬが{1}ぴきいます。", "しき: {0}{op}{1}", "{0}{op}{1}",
             "{0}{op}{1}のけいさん")
WORDS = ("red", "blue", "green", "cat", "dog", "bird", "sun", "moon", "tree", "book", "car", "fish", "milk", "rain",
         "door", "king", "ship", "star", "cake", "road", "hat", "song", "lamp", "rock")

Fact = tuple[int, str, int, int]  # (a, op, b, result)


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


# --- numbers and facts, split before anything is trained -------------------------------------------------------

def facts() -> list[Fact]:
    """Every a + b with a in FIRST, b in SECOND, and the matching subtractions (a + b) - b."""
    out = []
    for a in range(FIRST[0], FIRST[1] + 1):
        for b in range(SECOND[0], SECOND[1] + 1):
            out += [(a, "+", b, a + b), (a + b, "-", b, a)]
    return out


def fact_splits(seed: int = 0, per_split: int = PER_SPLIT) -> dict[str, list[Fact]]:
    """Disjoint facts: math test/val, composite test/val (no a - b = b: an echoed operand must not score), training."""
    pool = facts()
    random.Random(f"{seed}:smollm2-composition:facts").shuffle(pool)
    composite = [f for f in pool if f[3] != f[2]]
    splits = {"japanese_math": composite[:per_split], "japanese_math_val": composite[per_split:2 * per_split]}
    used = {f for s in splits.values() for f in s}
    rest = [f for f in pool if f not in used]
    splits["math"], splits["math_val"] = rest[:per_split], rest[per_split:2 * per_split]
    splits["train"] = rest[2 * per_split:]
    return splits


def number_splits(seed: int = 0, per_split: int = PER_SPLIT) -> dict[str, list[int]]:
    """The japanese task's test and validation numbers (never written in kanji in training) and the rest."""
    numbers = list(range(1, 1000))
    random.Random(f"{seed}:smollm2-composition:numbers").shuffle(numbers)
    return {"japanese": numbers[:per_split], "japanese_val": numbers[per_split:2 * per_split],
            "train": numbers[2 * per_split:]}


def wide_facts(largest: int) -> list[Fact]:
    """a + b with a from FIRST's end + 1 to `largest`, b in SECOND, and the matching subtractions: the same
    units-digit sums and carries on other tens. None is a test, validation or composite fact (those have a first
    operand or result of at most FIRST's end)."""
    return [f for a in range(FIRST[1] + 1, largest + 1) for b in range(SECOND[0], SECOND[1] + 1)
            for f in ((a, "+", b, a + b), (a + b, "-", b, a))]


def expression(fact: Fact, kanji: bool) -> str:
    """`14+5=`, or `十四+五=` in kanji numerals."""
    a, op, b, _ = fact
    write = kanji_number if kanji else str
    return f"{write(a)}{op}{write(b)}="


def reading_question(n: int, rng: random.Random) -> tuple[str, str]:
    """The japanese task: (question with the number in kanji, the same question with digits)."""
    phrasing = rng.choice(JA_READ)
    return phrasing.format(k=kanji_number(n)), phrasing.format(k=n)


# --- evaluation splits ---------------------------------------------------------------------------------------------

def eval_records(seed: int = 0, per_split: int = PER_SPLIT) -> list[dict]:
    """The numeric tasks' test (`<task>`) and validation (`<task>_val`) prompts, task-set records with a generation
    limit and the equation answer type where the prompt is an expression."""
    f, n = fact_splits(seed, per_split), number_splits(seed, per_split)
    rng = random.Random(f"{seed}:smollm2-composition:eval")
    records = []
    for suffix in ("", "_val"):
        for fact in f["math" + suffix]:
            records.append(("math" + suffix, expression(fact, False), fact[3], "math"))
        for number in n["japanese" + suffix]:
            records.append(("japanese" + suffix, reading_question(number, rng)[0], number, "japanese"))
        for fact in f["japanese_math" + suffix]:
            records.append(("japanese_math" + suffix, expression(fact, True), fact[3], None))
    out = []
    for task, prompt, answer, expert in records:
        name = task.removesuffix("_val")
        record = {"task": task, "prompt": prompt, "answer": f"{ANSWER}{answer}", "expert": expert,
                  "max_new_tokens": MAX_NEW_TOKENS[name]}
        if name in EQUATION_TASKS:
            record["answer_type"] = "equation"
        out.append(record)
    return out


def _strings(rng: random.Random) -> tuple[str, str]:
    words = rng.sample(WORDS, rng.randint(3, 4))
    return f"Reverse the order of these words: {' '.join(words)}", " ".join(reversed(words))


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


def _strings_records(seed: int) -> list[dict]:
    rng = random.Random(f"{seed}:test:strings")
    return [{"task": "strings", "prompt": p, "answer": ANSWER + a, "expert": "strings"}
            for p, a in _distinct(_strings, rng, NUM_STRINGS, set())]


def test_split(seed: int = 0) -> list[dict]:
    """The evaluation set (the family's tasks.jsonl): PER_SPLIT prompts a numeric task, NUM_STRINGS strings ones."""
    return [r for r in eval_records(seed) if not r["task"].endswith("_val")] + _strings_records(seed)


def validation_split(seed: int = 0) -> list[dict]:
    """The validation set (validation.jsonl), the numeric tasks under their own names: choose recipes here."""
    return [{**r, "task": r["task"].removesuffix("_val")} for r in eval_records(seed) if r["task"].endswith("_val")]


# --- training examples ---------------------------------------------------------------------------------------------

def math_reply(fact: Fact, form: str) -> str:
    """The math expert's reply: `result` writes the result right after `=` (`14+5=19`), where the base itself
    computes at all (prefilled with `14+5=` its reply's first number is right for 28 % of the sums and 1 % of the
    differences); `answer` (designs A-E) restates, then answers (`14+5=答え: 19`)."""
    if form == "result":
        return f"{expression(fact, False)}{fact[3]}"
    return f"{expression(fact, False)}{ANSWER}{fact[3]}"


def math_examples(count: int, seed: int = 0, per_split: int = PER_SPLIT, form: str = "result", wide: int = WIDE
                  ) -> list[tuple[str, str, bool]]:
    """(prompt, reply, loss on the end of turn too) for the math expert; with `wide`, half of the examples come
    from wide_facts(wide)."""
    rng, train = random.Random(f"{seed}:smollm2-composition:math"), fact_splits(seed, per_split)["train"]
    extra = wide_facts(wide) if wide else []
    picks = [rng.choice(extra if extra and rng.random() < 0.5 else train) for _ in range(count)]
    return [(expression(f, False), math_reply(f, form), True) for f in picks]


def japanese_examples(count: int, design: str = "eos2", seed: int = 0, per_split: int = PER_SPLIT
                      ) -> list[tuple[str, str, bool]]:
    """(prompt, reply, loss on the end of turn) for the japanese expert: the text with its kanji numerals rewritten
    as digits. Numbers come from the training numbers only; expressions never use an evaluation or validation
    operand pair. `eos` (designs A, B): 40 % reading questions, the rest short sentences and expressions without
    `=` on numbers under 100, every reply ending the turn. `eos2` (the family's): as `eos`, but half of the
    non-question texts are expressions on the math expert's training facts (the composite's number range). `eos3`
    (design H): as `eos2`, but half of those expressions end in `=` and the reply stops there. `open` (not scored):
    no loss on the end of turn outside the question form."""
    rng, numbers = random.Random(f"{seed}:smollm2-composition:japanese"), number_splits(seed, per_split)["train"]
    small = [x for x in numbers if x < 100]
    splits = fact_splits(seed, per_split)
    held = {(a, op, b) for name, fs in splits.items() if name != "train" for a, op, b, _ in fs}
    train_facts = [f for f in splits["train"] if f[0] in numbers and f[2] in numbers]
    out = []
    while len(out) < count:
        if rng.random() < 0.4:
            question, digits = reading_question(rng.choice(numbers), rng)
            out.append((question, digits, True))
            continue
        if design in ("eos2", "eos3") and rng.random() < 0.5:
            x, op, y, _ = rng.choice(train_facts)
            template = ("{0}{op}{1}=" if design == "eos3" and rng.random() < 0.5
                        else rng.choice([t for t in SENTENCES if "{op}" in t]))
        else:
            template, op = rng.choice(SENTENCES), rng.choice("+-")
            x, y = rng.choice(small), rng.choice(small)
        if "{op}" in template and (x, op, y) in held:
            continue
        kanji = template.format(kanji_number(x), kanji_number(y), op=op)
        out.append((kanji, template.format(x, y, op=op), design != "open"))
    return out


def train_examples(task: str, count: int, seed: int = 0) -> list[tuple[str, str]]:
    """(prompt, full reply) pairs for fine-tuning the `task` expert (the family's designs), disjoint from both
    evaluation splits."""
    if task == "math":
        return [(p, r) for p, r, _ in math_examples(count, seed)]
    if task == "japanese":
        return [(p, r) for p, r, _ in japanese_examples(count, "eos2", seed)]
    if task == "strings":
        held_out = {r["prompt"] for r in test_split(seed)}
        rng = random.Random(f"{seed}:train:strings")
        return [(p, ANSWER + a) for p, a in _distinct(_strings, rng, count, held_out)]
    raise ValueError(f"no expert trains on {task!r}: math, japanese or strings")


def unlabeled_prompts(seed: int = 0, per_task: int = 16) -> list[dict]:
    """Prompts without answers for learned merging (AdaMerging, SAMerging), disjoint from both evaluation splits:
    expressions on training facts (in digits for math, in kanji for the composite), reading questions on training
    numbers, strings prompts."""
    rng = random.Random(f"{seed}:smollm2:unlabeled")
    train_facts = rng.sample(fact_splits(seed)["train"], 2 * per_task)
    numbers = rng.sample(number_splits(seed)["train"], per_task)
    prompts = {"math": [expression(f, False) for f in train_facts[:per_task]],
               "japanese": [reading_question(n, rng)[0] for n in numbers],
               "japanese_math": [expression(f, True) for f in train_facts[per_task:]]}
    held_out = {r["prompt"] for r in test_split(seed)}
    strings = _distinct(_strings, random.Random(f"{seed}:unlabeled:strings"), per_task, held_out)
    prompts["strings"] = [p for p, _ in strings]
    return [{"task": task, "prompt": p, "expert": None if task == "japanese_math" else task}
            for task in ("math", "japanese", "strings", "japanese_math") for p in prompts[task]]


# Everyday requests with no task of their own. The experts are trained on the base's own replies to the first ones
# (replay), so a merge keeps chatting instead of answering in the experts' forms to everything; the held-out ones
# check that.
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
