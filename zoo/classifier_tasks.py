"""Task generators of the classifier family: template sentences from word lists, each carrying four attributes
(sentiment, topic, question, negation); each task labels a sentence by its own attribute.

Sentiment is the adjective's polarity flipped by a negation ("the game was not great" is negative), so the
sentiment and negation experts must both read the word "not"/"never": a source of real interference.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

SPLIT_SEED = 20240611
EVAL_PER_TASK = 80
UNLABELED_PER_TASK = 256

TOPIC_NOUNS = {
    "sports": ("game", "match", "team", "coach", "player", "race", "season", "stadium"),
    "food": ("meal", "soup", "pizza", "cake", "dinner", "bread", "coffee", "salad"),
    "tech": ("phone", "laptop", "app", "screen", "robot", "software", "camera", "website"),
    "travel": ("trip", "flight", "hotel", "beach", "train", "city", "tour", "cruise"),
}
ADJECTIVES = {
    "positive": ("great", "good", "wonderful", "amazing", "lovely", "excellent", "fun", "nice"),
    "negative": ("awful", "bad", "terrible", "boring", "poor", "horrible", "dull", "nasty"),
}
DETERMINERS = ("the", "my", "this", "our", "that", "your")
INTENSIFIERS = ("", "really", "very", "quite", "so", "truly")
TIME_PHRASES = ("", "today", "yesterday", "last night", "this week", "again")
NEGATORS = ("not", "never")
QUESTION_OPENERS = ("", "do you think", "would you say")

LABELS = {
    "sentiment": ("negative", "positive"),
    "topic": ("sports", "food", "tech", "travel"),
    "question": ("statement", "question"),
    "negation": ("affirmative", "negated"),
}


@dataclass(frozen=True)
class Sentence:
    text: str
    labels: dict[str, str]


def vocabulary() -> list[str]:
    """Every word the generator can emit, in a fixed order."""
    words: list[str] = []
    groups = [*TOPIC_NOUNS.values(), *ADJECTIVES.values(), DETERMINERS, INTENSIFIERS, TIME_PHRASES, NEGATORS,
              QUESTION_OPENERS, ("is", "was", "seems", "i", "think", "it")]
    for group in groups:
        for phrase in group:
            for word in phrase.split():
                if word not in words:
                    words.append(word)
    return words


def random_sentence(rng: random.Random) -> Sentence:
    topic = rng.choice(sorted(TOPIC_NOUNS))
    polarity = rng.choice(("negative", "positive"))
    negated = rng.random() < 0.5
    question = rng.random() < 0.5
    noun = rng.choice(TOPIC_NOUNS[topic])
    adjective = rng.choice(ADJECTIVES[polarity])
    verb = rng.choice(("is", "was"))
    subject = f"{rng.choice(DETERMINERS)} {noun}"
    predicate = " ".join(w for w in (rng.choice(NEGATORS) if negated else "", rng.choice(INTENSIFIERS), adjective) if w)
    if question:
        opener = rng.choice(QUESTION_OPENERS)
        core = f"{opener} {subject} {verb} {predicate}" if opener else f"{verb} {subject} {predicate}"
    else:
        opener = rng.choice(("", "i think"))
        core = f"{opener} {subject} {verb} {predicate}".strip()
    text = " ".join(w for w in (core, rng.choice(TIME_PHRASES)) if w)
    flipped = polarity if not negated else ("positive" if polarity == "negative" else "negative")
    return Sentence(text.strip(), {
        "sentiment": flipped, "topic": topic,
        "question": "question" if question else "statement",
        "negation": "negated" if negated else "affirmative",
    })


@dataclass
class ClassifierSplit:
    """Held-out evaluation sentences, unlabeled texts (disjoint from evaluation) and a training sampler that never
    yields an evaluation sentence."""

    evaluation: dict[str, list[Sentence]]
    unlabeled: dict[str, list[str]]

    def held_out(self) -> set[str]:
        return {s.text for sentences in self.evaluation.values() for s in sentences}

    def sample_train(self, rng: random.Random) -> Sentence:
        held_out = self.held_out()
        while True:
            sentence = random_sentence(rng)
            if sentence.text not in held_out:
                return sentence


def fresh_sentences(rng: random.Random, count: int, taken: set[str]) -> list[Sentence]:
    """`count` random sentences whose texts are not in `taken`; each drawn text is added to `taken`, so successive
    calls give disjoint sets (scored, unlabeled, ...)."""
    drawn: list[Sentence] = []
    while len(drawn) < count:
        s = random_sentence(rng)
        if s.text not in taken:
            taken.add(s.text)
            drawn.append(s)
    return drawn


def disjoint_split(tasks: Iterable[str], seed: int, scored_per_task: int, unlabeled_per_task: int
                   ) -> tuple[dict[str, list[Sentence]], dict[str, list[str]], set[str]]:
    """(scored sentences per task, unlabeled texts per task, every text drawn), all disjoint. Each task draws from
    its own generator seeded by `seed` and its name; every task's scored sentences are drawn before any unlabeled
    ones (the order the shipped task files were drawn in)."""
    tasks = list(tasks)
    taken: set[str] = set()
    scored = {task: fresh_sentences(random.Random(f"{seed}:{task}"), scored_per_task, taken) for task in tasks}
    unlabeled = {task: [s.text for s in fresh_sentences(random.Random(f"{seed}:{task}:unlabeled"),
                                                        unlabeled_per_task, taken)]
                 for task in tasks}
    return scored, unlabeled, taken


def classifier_split() -> ClassifierSplit:
    evaluation, unlabeled, _ = disjoint_split(LABELS, SPLIT_SEED, EVAL_PER_TASK, UNLABELED_PER_TASK)
    return ClassifierSplit(evaluation, unlabeled)
