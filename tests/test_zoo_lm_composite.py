"""The tiny LM family's composite design: the composite set is held out from every training stream, the scratchpad
replies rewrite kanji numerals in place, and each expert's loss covers its own stage only (docs/zoo.md)."""

from __future__ import annotations

import random
import re

import pytest

from zoo import lm
from zoo.lm_tasks import (
    KANJI_DIGITS,
    _fact_of,
    answer,
    held_out_facts,
    kanji_number,
    lm_splits,
    read_number,
    true_value,
)

SPLITS = lm_splits()
ARITHMETIC = re.compile(rf"^([0-9{KANJI_DIGITS}十]+)([+-])([0-9{KANJI_DIGITS}十]+)=?(はいくつ\?)?$")
PAIR = re.compile(r"(?=(?<!\d)(\d+)([+-])(\d+))")  # every a±b inside a text, overlapping


def test_read_number_inverts_kanji_number_and_rewrites_in_place():
    assert all(read_number(kanji_number(n)) == n and read_number(str(n)) == n for n in range(100))
    assert lm.digits_in_place("七十-六=") == "70-6=" and lm.digits_in_place("ab十九=c") == "ab19=c"
    assert _fact_of("七十-6=") == (70, "-", 6)


def test_composite_set_leaves_out_plus_or_minus_zero():
    """a ± 0 is the operand a: a model that restates and echoes would be scored right without computing."""
    assert all(not e.prompt.endswith("零=") for e in SPLITS["japanese_math"].evaluation)
    assert len(SPLITS["japanese_math"].evaluation) == 60


def _arithmetic_fact(prompt: str) -> tuple[int, str, int] | None:
    match = ARITHMETIC.match(prompt)
    return _fact_of(f"{match.group(1)}{match.group(2)}{match.group(3)}") if match else None


def _posed(pairs) -> list[str]:
    """The prompts of pairs that pose a problem: the echo format's random strings (`答え: <the prompt>`) pose none."""
    return [pair[0] for pair in pairs if not pair[1].endswith(answer(pair[0]))]


SETTINGS = {
    "shipped": lm.LMSettings(),
    "direct": lm.LMSettings(scratchpad=False),
    "scratchpad without replay": lm.LMSettings(replay_share=0.0, rewrite_contexts=False),
    "replay and rewrite contexts": lm.LMSettings(replay_share=0.25, rewrite_contexts=True),
}


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
def test_no_training_stream_holds_an_evaluation_problem(settings):
    """Neither the base's mixture nor any expert's stream (its replay of the base mixture and its rewriting in
    operator contexts included) poses a math or japanese_math evaluation operand pair (in any numerals, anywhere in
    the text), and the japanese evaluation numbers never occur as kanji outside the random echo strings."""
    held = held_out_facts(SPLITS)
    hidden = {e.prompt for e in SPLITS["japanese"].evaluation}
    rng = random.Random(0)
    mixture = lm.Pretraining(SPLITS, settings.scratchpad)
    streams = [lm.expert_stream(SPLITS[t], settings) for t in ("math", "japanese", "strings")]
    seen_arithmetic = 0
    for _ in range(4000):
        for prompt in _posed([mixture.pair(rng)] + [s.pair(rng) for s in streams]):
            fact = _arithmetic_fact(prompt)
            seen_arithmetic += fact is not None
            assert fact not in held, prompt
            pairs = {(int(a), op, int(b)) for a, op, b in PAIR.findall(lm.digits_in_place(prompt))}
            assert not pairs & held, prompt
            if not ARITHMETIC.match(prompt) and prompt.endswith("はいくつ?"):
                assert prompt.removesuffix("はいくつ?") not in hidden, prompt
    hidden_numbers = {read_number(n) for n in hidden}
    for _ in range(2000):
        text = streams[1].pair(rng)[0]  # the japanese expert: numerals alone or inside other text
        assert all(read_number(run) not in hidden_numbers for run in re.findall(f"[{KANJI_DIGITS}十]+", text)), text
    assert seen_arithmetic > 3000  # the check did see arithmetic prompts


def test_the_japanese_expert_learns_its_own_stage_only():
    """With the scratchpad the japanese expert's loss covers the restatement (and its end) only, the math expert's
    its whole reply; without the scratchpad, each covers the whole reply."""
    tokenizer = lm.build_tokenizer()
    encoder = lm.Encoder(tokenizer)

    def supervised(pair) -> str:
        labels = encoder.batch([pair])["labels"][0].tolist()
        return tokenizer.decode([t for t in labels if t != -100])

    japanese = lm.ExpertStream(SPLITS["japanese"], True).staged("七十八", "78")
    math = lm.ExpertStream(SPLITS["math"], True).staged("37+5=", "42")
    assert japanese[:2] == ("七十八", "78答え: 78") and supervised(japanese) == "78答"
    assert math[:2] == ("37+5=", "37+5=答え: 42") and supervised(math) == "37+5=答え: 42</s>"
    direct = lm.ExpertStream(SPLITS["japanese"], False).staged("七十八", "78")
    assert direct == ("七十八", "答え: 78") and supervised(direct) == "答え: 78</s>"


def test_a_merge_of_the_shipped_experts_answers_kanji_arithmetic_that_neither_expert_does():
    """The shipped family's composite, scored as the app scores it (LiveMerger + evaluation): task arithmetic of the
    three experts at the weights chosen on the validation split (math 1.3, japanese 0.4, strings 0.7) chains
    `七十-六=` -> `70-6=` -> `答え: 64` on 78 % of the held-out composite set (bench/composition.py, design E15),
    where the base scores 0, the math expert 7 % and the japanese expert 3 %, while keeping ≥ 80 % of math and
    japanese (97 % and 92 % measured)."""
    import zoo
    from evaluation.agreement import Evaluator
    from evaluation.tasks import load_tasks, tasks_for_experts
    from inference.loading import load_model
    from merging.live import LiveMerger
    from merging.recipe import Recipe

    experts = ("math", "japanese", "strings")
    family = zoo.tiny_families()["lm"]
    loaded = {name: load_model(folder) for name, folder in family.models().items()}
    tasks = tasks_for_experts(load_tasks(family.tasks), list(experts))
    evaluator = Evaluator(tasks, {e: loaded[e] for e in experts})
    alone = {name: evaluator.score(model).scores for name, model in loaded.items()}
    states = {name: m.model.state_dict() for name, m in loaded.items()}
    merger = LiveMerger(states["base"], {e: states[e] for e in experts}, num_layers=3, threads=1)
    recipe = Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": "base", "dtype": "float32",
                               "models": [{"model": e, "parameters": {"weight": w}}
                                          for e, w in zip(experts, (1.3, 0.4, 0.7))]})
    merged = evaluator.score_state(merger.merge(recipe)).scores
    composite = {name: scores["japanese_math"].accuracy for name, scores in alone.items()}
    assert composite["base"] <= 0.05 and composite["math"] <= 0.1 and composite["japanese"] <= 0.1, composite
    assert merged["japanese_math"].accuracy >= 0.6, merged["japanese_math"].accuracy
    for skill in ("math", "japanese"):
        assert merged[skill].accuracy >= 0.8 * alone[skill][skill].accuracy, (skill, merged[skill].accuracy)


def test_true_value_reads_a_numeral_or_computes_an_arithmetic_prompt():
    assert true_value("七十-六=") == 64 and true_value("四十+7=") == 47 and true_value("13+6=") == 19
    assert true_value("四十二") == 42 and true_value("37") == 37
    assert all(true_value(f"{kanji_number(a)}-{b}=") == a - b for a in range(10, 100) for b in range(10))
