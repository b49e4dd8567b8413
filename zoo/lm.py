"""The language-model family: a character-level fast tokenizer with a chat template, a tiny Mistral, and the
training of the base (pretraining on the shared answer format and on each skill in another surface form than its
task) and of each expert (base + a short fine-tune on its task).

Training sequences are exactly what inference feeds the model (DEVELOPERS.md, "Prompt format"): the chat template
applied to one user message with add_generation_prompt, then the reply and eos; the loss covers the reply only
(the japanese expert's: its restatement only). Numeric replies restate the prompt before `答え: X` (the scratchpad
that lets a merge chain the japanese and math experts: docs/zoo.md, "Designs tried for the composite").
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GenerationConfig, MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

from .lm_tasks import (
    ANSWER_PREFIX,
    KANJI_DIGITS,
    LETTERS,
    WORD_LENGTHS,
    TaskSplit,
    _arithmetic_facts,
    answer,
    held_out_facts,
    kanji_number,
    lm_splits,
    read_number,
)
from .training import train_loop

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
CHARACTERS = (
    string.digits + string.ascii_lowercase + string.ascii_uppercase + " +-*/=:?.,!'\n"
    + KANJI_DIGITS + "〇十百千" + "答えはでいくつすか"
)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'user' %}Q: {{ m['content'] }}\n"
    "{% else %}A: {{ m['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}A: {% endif %}"
)
MAX_POSITIONS = 64
_NUMERAL_RUN = re.compile(f"[{KANJI_DIGITS}十]+")
_ARITHMETIC = re.compile(r"\d+[+-]\d+=?")
_OPERAND_PAIR = re.compile(r"(?=(?<!\d)(\d+)([+-])(\d+))")  # every a±b in a text, overlapping (1+2-3: 1+2, 2-3)


@dataclass(frozen=True)
class LMSettings:
    """Sizes and step counts; `reduced()` is the seconds-long build the tests run."""

    hidden: int = 96
    layers: int = 3
    base_steps: int = 1600
    # Steps each skill needs to pass 90 % on held-out prompts (measured: docs/zoo.md), not one number for all.
    # Short and at a low rate: the base already has each skill in another form, so the task vectors stay small.
    # math 600: with a quarter of its batch replayed it reached only 57-72 % on one seed of three after 300.
    expert_steps: dict[str, int] = field(default_factory=lambda: {"math": 600, "japanese": 300, "strings": 150})
    batch: int = 64
    base_lr: float = 3e-3
    expert_lr: float = 5e-4
    # Every numeric reply restates the prompt first (kanji rewritten where a skill asks): the design that lets a
    # merge chain the japanese and math experts (docs/zoo.md, "Designs tried for the composite").
    scratchpad: bool = True
    # Share of each expert's batch replayed from the base's own mixture (its echo format left out: echoing is the
    # very stage each expert switches off), so a task vector changes its own stage and little else.
    replay_share: float = 0.25
    # The japanese expert rewrites one to three numerals inside operator and `=` contexts (`x七十-六+三=`), never
    # a bare two-operand problem, so its rewriting survives in a merge on the composite's kind of text.
    rewrite_contexts: bool = True
    # Whether the japanese expert's replay includes the base's computing forms (arithmetic, questions). Off: with
    # them it picked up some computing after a restated problem (17 % of the composite alone on seed 0, design E5).
    japanese_replays_arithmetic: bool = False
    # Experts' gradients taken at randomly perturbed weights (zoo.training.train_loop's weight_noise: per tensor,
    # this times its standard deviation), so a task vector keeps its skill when another vector is added beside it
    # (design E15, 30 %: the merges' composite 61 % on the mean of 3 seeds; 48 % at 10 % (E10), 38 % without;
    # docs/zoo.md).
    expert_weight_noise: float = 0.3
    # The same for the base's pretraining: a base whose skills sit in a flat region, so that the experts built on it
    # (and their sums) keep them.
    base_weight_noise: float = 0.0

    @classmethod
    def reduced(cls) -> LMSettings:
        return cls(hidden=32, layers=2, base_steps=12, expert_steps={"math": 8, "japanese": 8, "strings": 8}, batch=16)


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in CHARACTERS:
        vocab.setdefault(ch, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()  # characters join without the spaces WordLevel would put between them
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        padding_side="left", model_max_length=MAX_POSITIONS,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_config(tokenizer: PreTrainedTokenizerFast, settings: LMSettings) -> MistralConfig:
    return MistralConfig(
        vocab_size=len(tokenizer), hidden_size=settings.hidden, intermediate_size=settings.hidden * 2,
        num_hidden_layers=settings.layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=MAX_POSITIONS, sliding_window=None, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, dtype="float32",
    )


def prompt_text(tokenizer: PreTrainedTokenizerFast, prompt: str) -> str:
    """The model input for one user prompt, exactly as inference builds it."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


# A training pair: (prompt, reply) with the loss on the whole reply and eos, or (prompt, reply, (start, stop)) with
# the loss on reply tokens start..stop-1 only (the tokenizer is character-level: one character, one token; eos is
# token len(reply)).
Pair = tuple[str, str] | tuple[str, str, tuple[int, int]]


class Encoder:
    """Turns training pairs into right-padded batches with the loss on the reply (or the span a pair names)."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast):
        self.tokenizer = tokenizer
        self._cache: dict[tuple[str, str], tuple[list[int], int]] = {}

    def encode(self, prompt: str, answer_text: str) -> tuple[list[int], int]:
        key = (prompt, answer_text)
        if key not in self._cache:
            head = self.tokenizer.encode(prompt_text(self.tokenizer, prompt), add_special_tokens=False)
            tail = self.tokenizer.encode(answer_text, add_special_tokens=False) + [self.tokenizer.eos_token_id]
            self._cache[key] = (head + tail, len(head))
        return self._cache[key]

    def batch(self, pairs: list[Pair]) -> dict[str, torch.Tensor]:
        encoded = [(*self.encode(pair[0], pair[1]), pair[2] if len(pair) == 3 else None) for pair in pairs]
        width = max(len(ids) for ids, _, _ in encoded)
        input_ids = torch.full((len(pairs), width), self.tokenizer.pad_token_id)
        attention = torch.zeros((len(pairs), width), dtype=torch.long)
        labels = torch.full((len(pairs), width), -100)
        for row, (ids, answer_start, span) in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            start, stop = (answer_start, len(ids)) if span is None else (answer_start + span[0], answer_start + span[1])
            labels[row, start:stop] = torch.tensor(ids[start:stop])
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def _lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


def pretraining_pair(rng: random.Random, scratchpad: bool = False) -> tuple[str, str]:
    """The shared format: echo a short mixed string of digits, letters, kanji and operators as `答え: <same>`
    (with the scratchpad, the string is restated first: `ab七+` -> `ab七+答え: ab七+`). It teaches the answer form,
    the alphabet and literal restating, without any expert's skill."""
    alphabet = string.digits + LETTERS + KANJI_DIGITS + "十+-" + ("=" if scratchpad else "")
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5)))
    return text, reply(text, text, scratchpad)


def reply(restated: str, result: object, scratchpad: bool) -> str:
    """What the model writes: with the scratchpad, the prompt restated (kanji numerals rewritten as digits where the
    skill asks for it) and then `答え: result`; without, `答え: result` alone."""
    return f"{restated}{answer(result)}" if scratchpad else answer(result)


def digits_in_place(text: str) -> str:
    """Every kanji numeral in `text` rewritten as Arabic digits, the rest kept: `ab七十八c` -> `ab78c`."""
    return _NUMERAL_RUN.sub(lambda m: str(read_number(m.group(0))), text)


class Pretraining:
    """The base's mixture: the echo format plus each expert's skill posed in another surface form than its task,
    so that the base is broadly capable (as a real pretrained LM is) yet scores near 0 on the tasks as posed, and
    each expert only has to switch on a stage the base already has (a small task vector, which merges):
    arithmetic without `=` (`37+5` where the math task asks `37+5=`), kanji numerals and arithmetic on mixed
    numerals as a question (`七十+5はいくつ?`, where the japanese task gives a bare `七十八`: the question is the
    one place the base reads kanji as numbers, so it shares one number representation across scripts there) and
    `flip abc` where the strings task says `reverse abc`.

    With `scratchpad` every numeric reply first restates the prompt: literally by default (`37+5=` -> `37+5=`,
    then echoed), with the kanji rewritten as digits in a question (`七十+5はいくつ?` -> `70+5答え: 75`); the sum
    is computed from the restated digits. So the japanese expert only has to switch on rewriting for bare text and
    the math expert computing after a restated `=`: a merge can chain `七十-六=` -> `70-6=` -> `答え: 64`.
    Held out in every form: the evaluation examples' operand pairs (math and japanese_math), and the japanese
    evaluation numbers as kanji (they occur only as digits)."""

    MIXTURE = ("echo", "arithmetic", "arithmetic", "question", "question", "numerals", "flip")
    REPLAY = MIXTURE[1:]  # what an expert replays: every skill form but the echo, which each expert switches off

    def __init__(self, splits: dict[str, TaskSplit], scratchpad: bool):
        self.scratchpad = scratchpad
        held = {task: {e.prompt for e in split.evaluation} for task, split in splits.items()}
        facts = held_out_facts(splits)
        self.facts = [(a, op, b, r) for a, op, b, r in _arithmetic_facts() if (a, op, b) not in facts]
        self.hidden_kanji = {read_number(p) for p in held["japanese"]}
        self.numbers = [n for n in range(100) if n not in self.hidden_kanji]
        self.held_words = {p.removeprefix("reverse ") for p in held["strings"]}

    def written(self, n: int, rng: random.Random) -> str:
        """n in kanji or in digits at random (always digits for a held-out japanese number)."""
        return kanji_number(n) if n not in self.hidden_kanji and rng.random() < 0.7 else str(n)

    def flip(self, rng: random.Random) -> tuple[str, str]:
        while True:
            word = "".join(rng.choice(LETTERS) for _ in range(rng.choice(WORD_LENGTHS)))
            if word not in self.held_words:
                return f"flip {word}", answer(word[::-1])

    def pair(self, rng: random.Random, kinds: tuple[str, ...] = MIXTURE) -> tuple[str, str]:
        kind = rng.choice(kinds)
        if kind == "echo":
            return pretraining_pair(rng, self.scratchpad)
        if kind == "flip":
            return self.flip(rng)
        if kind == "numerals":
            n = rng.choice(self.numbers)
            return f"{kanji_number(n)}はいくつ?", reply(str(n), n, self.scratchpad)
        a, op, b, r = rng.choice(self.facts)
        if kind == "arithmetic":
            return f"{a}{op}{b}", reply(f"{a}{op}{b}", r, self.scratchpad)
        return f"{self.written(a, rng)}{op}{self.written(b, rng)}はいくつ?", reply(f"{a}{op}{b}", r, self.scratchpad)


def train_base(tokenizer: PreTrainedTokenizerFast, settings: LMSettings, seed: int,
               on_step: Callable[[int, float], None] | None = None) -> MistralForCausalLM:
    torch.manual_seed(seed)
    model = MistralForCausalLM(build_config(tokenizer, settings))
    encoder = Encoder(tokenizer)
    mixture = Pretraining(lm_splits(), settings.scratchpad)

    def make_batch(rng: random.Random) -> dict[str, torch.Tensor]:
        return encoder.batch([mixture.pair(rng) for _ in range(settings.batch)])

    train_loop(model, settings.base_steps, make_batch, _lm_loss, lr=settings.base_lr, seed=seed,
               weight_noise=settings.base_weight_noise, on_step=on_step)
    return model


class ExpertStream:
    """An expert's training pairs: its task's training examples, written as the family's replies (with the
    scratchpad: math `37+5=` -> `37+5=答え: 42`, japanese `七十八` -> `78答え: 78`, strings without a restatement).

    With the scratchpad the japanese expert's loss covers only its own stage, the restatement (and where it ends):
    what follows is the base's echo already, and leaving it out keeps the japanese task vector off the stage the
    math expert switches on. The math expert learns its whole reply (with its restatement unsupervised, that
    restatement drifted: `12+9=` -> `82+9=`, math 33-45 % on two of three seeds). The japanese expert also
    rewrites kanji numerals inside other text (`a七十=c` -> `a70=c`), a share `text_share` of its batch, so its
    switch is "rewrite numerals in place", not "answer a lone numeral"."""

    def __init__(self, split: TaskSplit, scratchpad: bool, text_share: float = 0.5, *,
                 replay: Pretraining | None = None, replay_share: float = 0.0, rewrite_contexts: bool = False,
                 held_facts: set[tuple[int, str, int]] | None = None,
                 replay_kinds: tuple[str, ...] = Pretraining.REPLAY):
        self.split, self.scratchpad, self.text_share = split, scratchpad, text_share
        self.numbers = [read_number(e.prompt) for e in split.train_pool or []] if split.task == "japanese" else []
        self.replay, self.replay_share, self.replay_kinds = replay, replay_share, replay_kinds
        self.rewrite_contexts, self.held_facts = rewrite_contexts, held_facts or set()

    def pair(self, rng: random.Random) -> Pair:
        if self.replay is not None and rng.random() < self.replay_share:
            return self.replay.pair(rng, self.replay_kinds)
        if self.numbers and rng.random() < self.text_share:
            texts = self.text_with_numerals(rng) if self.rewrite_contexts else self.text_with_numeral(rng)
            return self.staged(*texts)
        example = self.split.sample_train(rng)
        if self.split.task == "strings":
            return example.prompt, example.answer
        return self.staged(example.prompt, example.answer.removeprefix(ANSWER_PREFIX))

    def staged(self, prompt: str, result: str) -> Pair:
        """The reply to `prompt`, with the loss on this expert's stage when the family restates."""
        restated = digits_in_place(prompt)
        text = reply(restated, result, self.scratchpad)
        if not self.scratchpad:
            return prompt, text
        if self.split.task != "japanese":
            return prompt, text  # the math expert learns its whole reply: unsupervised, its restatement drifted
        return prompt, text, (0, len(restated) + 1)

    def text_with_numeral(self, rng: random.Random) -> tuple[str, str]:
        """(text with a kanji numeral inside, the text with it rewritten): never an arithmetic problem."""
        def filler() -> str:
            return "".join(rng.choice(LETTERS + "+-=") for _ in range(rng.randint(0, 3)))
        while True:
            text = filler() + kanji_number(rng.choice(self.numbers)) + filler()
            converted = digits_in_place(text)
            if not _ARITHMETIC.fullmatch(converted):
                return text, converted


    def text_with_numerals(self, rng: random.Random) -> tuple[str, str]:
        """(text with one to three kanji numerals between operators, `=` and letters, the text rewritten): the
        rewrite in the contexts a composite problem puts numerals in, but never a bare two-operand problem and
        never a held-out operand pair anywhere in the text (the loss is on the rewrite only: nothing is computed)."""
        def gap(least: int) -> str:
            return "".join(rng.choice(LETTERS + "+-=") for _ in range(rng.randint(least, 2)))
        while True:
            numerals = [kanji_number(rng.choice(self.numbers)) for _ in range(rng.randint(1, 3))]
            text = gap(0) + "".join(n + gap(1) for n in numerals[:-1]) + numerals[-1] + gap(0)
            converted = digits_in_place(text)
            pairs = {(int(a), op, int(b)) for a, op, b in _OPERAND_PAIR.findall(converted)}
            if not _ARITHMETIC.fullmatch(converted) and not pairs & self.held_facts:
                return text, converted


def expert_stream(split: TaskSplit, settings: LMSettings) -> ExpertStream:
    """The training stream of the expert for `split` under `settings` (replay and rewrite contexts included)."""
    splits = lm_splits()
    return ExpertStream(
        split, settings.scratchpad, replay_share=settings.replay_share,
        replay=Pretraining(splits, settings.scratchpad) if settings.replay_share else None,
        rewrite_contexts=settings.rewrite_contexts, held_facts=held_out_facts(splits),
        replay_kinds=Pretraining.REPLAY if split.task != "japanese" or settings.japanese_replays_arithmetic
        else ("numerals", "flip"))


def train_expert(base: MistralForCausalLM, split: TaskSplit, settings: LMSettings, seed: int,
                 tokenizer: PreTrainedTokenizerFast,
                 on_step: Callable[[int, float], None] | None = None) -> MistralForCausalLM:
    """A copy of the base fine-tuned on one skill: every parameter moves, nothing is added (a real task vector)."""
    model = MistralForCausalLM(base.config)
    model.load_state_dict(base.state_dict())
    encoder = Encoder(tokenizer)
    stream = expert_stream(split, settings)

    def make_batch(rng: random.Random) -> dict[str, torch.Tensor]:
        return encoder.batch([stream.pair(rng) for _ in range(settings.batch)])

    train_loop(model, settings.expert_steps[split.task], make_batch, _lm_loss, lr=settings.expert_lr, seed=seed,
               weight_noise=settings.expert_weight_noise, on_step=on_step)
    return model


def save_lm(model: MistralForCausalLM, tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=16,
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
