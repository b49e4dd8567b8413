"""The language-model family: a character-level fast tokenizer with a chat template, a tiny Mistral, and the
training of the base (pretraining on the shared answer format and on each skill in another surface form than its
task) and of each expert (base + a short fine-tune on its task).

Training sequences are exactly what inference feeds the model (DEVELOPERS.md, "Prompt format"): the chat template
applied to one user message with add_generation_prompt, then `答え: X` and eos; the loss covers the answer only.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GenerationConfig, MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

from .lm_tasks import KANJI_DIGITS, LETTERS, WORD_LENGTHS, TaskSplit, _arithmetic_facts, answer, kanji_number, lm_splits
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


@dataclass(frozen=True)
class LMSettings:
    """Sizes and step counts; `reduced()` is the seconds-long build the tests run."""

    hidden: int = 96
    layers: int = 3
    base_steps: int = 1600
    # Steps each skill needs to pass 90 % on held-out prompts (measured: docs/zoo.md), not one number for all.
    # Short and at a low rate: the base already has each skill in another form, so the task vectors stay small.
    expert_steps: dict[str, int] = field(default_factory=lambda: {"math": 300, "japanese": 150, "strings": 150})
    batch: int = 64
    base_lr: float = 3e-3
    expert_lr: float = 5e-4

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


class Encoder:
    """Turns (prompt, answer) pairs into right-padded training batches with the loss on the answer and eos."""

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

    def batch(self, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
        encoded = [self.encode(p, a) for p, a in pairs]
        width = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(pairs), width), self.tokenizer.pad_token_id)
        attention = torch.zeros((len(pairs), width), dtype=torch.long)
        labels = torch.full((len(pairs), width), -100)
        for row, (ids, answer_start) in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            labels[row, answer_start : len(ids)] = torch.tensor(ids[answer_start:])
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def _lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


def pretraining_pair(rng: random.Random) -> tuple[str, str]:
    """The shared format: echo a short mixed string of digits, letters and kanji as `答え: <same>`.
    It teaches the answer form and the alphabet without any expert's skill."""
    alphabet = string.digits + LETTERS + KANJI_DIGITS + "十+-"
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5)))
    return text, answer(text)


class Pretraining:
    """The base's mixture: the echo format plus each expert's skill posed in another surface form than its task,
    so that the base is broadly capable (as a real pretrained LM is) yet scores near 0 on the tasks as posed, and
    each expert only has to connect its task's form to a skill the base has (a small task vector, which merges):
    arithmetic without `=` (`37+5` where the math task asks `37+5=`), kanji numerals as a question
    (`七十八はいくつ?` where the japanese task gives `七十八`) and `flip abc` where the strings task says `reverse abc`.
    Evaluation examples are left out in every form; the composite japanese_math is never trained on."""

    MIXTURE = ("echo", "arithmetic", "arithmetic", "arithmetic", "numerals", "flip")

    def __init__(self, splits: dict[str, TaskSplit]):
        held = {task: {e.prompt for e in split.evaluation} for task, split in splits.items()}
        self.arithmetic = [(f"{a}{op}{b}", answer(r)) for a, op, b, r in _arithmetic_facts()
                           if f"{a}{op}{b}=" not in held["math"]]
        self.numerals = [(f"{kanji_number(n)}はいくつ?", answer(n)) for n in range(100)
                         if kanji_number(n) not in held["japanese"]]
        self.held_words = {p.removeprefix("reverse ") for p in held["strings"]}

    def flip(self, rng: random.Random) -> tuple[str, str]:
        while True:
            word = "".join(rng.choice(LETTERS) for _ in range(rng.choice(WORD_LENGTHS)))
            if word not in self.held_words:
                return f"flip {word}", answer(word[::-1])

    def pair(self, rng: random.Random) -> tuple[str, str]:
        kind = rng.choice(self.MIXTURE)
        if kind == "echo":
            return pretraining_pair(rng)
        if kind == "flip":
            return self.flip(rng)
        return rng.choice(self.arithmetic if kind == "arithmetic" else self.numerals)


def train_base(tokenizer: PreTrainedTokenizerFast, settings: LMSettings, seed: int,
               on_step: Callable[[int, float], None] | None = None) -> MistralForCausalLM:
    torch.manual_seed(seed)
    model = MistralForCausalLM(build_config(tokenizer, settings))
    encoder = Encoder(tokenizer)
    mixture = Pretraining(lm_splits())

    def make_batch(rng: random.Random) -> dict[str, torch.Tensor]:
        return encoder.batch([mixture.pair(rng) for _ in range(settings.batch)])

    train_loop(model, settings.base_steps, make_batch, _lm_loss, lr=settings.base_lr, seed=seed, on_step=on_step)
    return model


def train_expert(base: MistralForCausalLM, split: TaskSplit, settings: LMSettings, seed: int,
                 tokenizer: PreTrainedTokenizerFast,
                 on_step: Callable[[int, float], None] | None = None) -> MistralForCausalLM:
    """A copy of the base fine-tuned on one skill: every parameter moves, nothing is added (a real task vector)."""
    model = MistralForCausalLM(base.config)
    model.load_state_dict(base.state_dict())
    encoder = Encoder(tokenizer)

    def make_batch(rng: random.Random) -> dict[str, torch.Tensor]:
        examples = [split.sample_train(rng) for _ in range(settings.batch)]
        return encoder.batch([(e.prompt, e.answer) for e in examples])

    train_loop(model, settings.expert_steps[split.task], make_batch, _lm_loss, lr=settings.expert_lr, seed=seed,
               on_step=on_step)
    return model


def save_lm(model: MistralForCausalLM, tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=16,
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
