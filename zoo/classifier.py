"""The classifier family: a word-level fast tokenizer, a tiny BERT pretrained with masked-language modelling as the
base (saved as BertForPreTraining so its `bert.*` tensors, pooler included, match the experts'), and experts that are
BertForSequenceClassification fine-tunes of it with their own head (`classifier.*`) and id2label."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertForPreTraining, BertForSequenceClassification, PreTrainedTokenizerFast

from .classifier_tasks import LABELS, ClassifierSplit, random_sentence, vocabulary
from .training import train_loop

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
MAX_POSITIONS = 32
MASK_PROBABILITY = 0.15


@dataclass(frozen=True)
class ClassifierSettings:
    hidden: int = 64
    layers: int = 2
    base_steps: int = 200
    # Sentiment (polarity flipped by negation) needs twice the steps of the one-cue tasks (measured: 75 % at 150).
    expert_steps: dict[str, int] = field(
        default_factory=lambda: {"sentiment": 300, "topic": 150, "question": 150, "negation": 150})
    batch: int = 64
    base_lr: float = 2e-3
    expert_lr: float = 2e-3

    @classmethod
    def reduced(cls) -> ClassifierSettings:
        return cls(hidden=16, layers=1, base_steps=6, expert_steps=dict.fromkeys(LABELS, 4), batch=16)


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in vocabulary():
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=MAX_POSITIONS,
    )


def build_config(tokenizer: PreTrainedTokenizerFast, settings: ClassifierSettings) -> BertConfig:
    return BertConfig(
        vocab_size=len(tokenizer), hidden_size=settings.hidden, num_hidden_layers=settings.layers,
        num_attention_heads=4, intermediate_size=settings.hidden * 2, max_position_embeddings=MAX_POSITIONS,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )


def _masked_batch(tokenizer: PreTrainedTokenizerFast, texts: list[str], gen: torch.Generator) -> dict:
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    ids = enc["input_ids"]
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    chosen = (torch.rand(ids.shape, generator=gen) < MASK_PROBABILITY) & ~special
    chosen[:, 1] |= ~chosen.any(dim=1)  # every sentence predicts at least one word
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    masked = torch.where(chosen, torch.full_like(ids, tokenizer.mask_token_id), ids)
    return {"input_ids": masked, "attention_mask": enc["attention_mask"], "labels": labels}


def _mlm_loss(model: BertForPreTraining, batch: dict) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).prediction_logits
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)


def train_base(tokenizer: PreTrainedTokenizerFast, settings: ClassifierSettings, split: ClassifierSplit, seed: int,
               on_step: Callable[[int, float], None] | None = None) -> BertForPreTraining:
    """Masked-language modelling on generated sentences (never an evaluation one): knows the words, not the tasks."""
    torch.manual_seed(seed)
    model = BertForPreTraining(build_config(tokenizer, settings))
    mask_gen = torch.Generator().manual_seed(seed)

    def make_batch(rng: random.Random) -> dict:
        return _masked_batch(tokenizer, [split.sample_train(rng).text for _ in range(settings.batch)], mask_gen)

    train_loop(model, settings.base_steps, make_batch, _mlm_loss, lr=settings.base_lr, seed=seed, on_step=on_step)
    return model


def expert_config(base_config: BertConfig, task: str) -> BertConfig:
    """The base config plus the task's labels: nothing else differs."""
    config = BertConfig.from_dict(base_config.to_dict())
    names = LABELS[task]
    config.num_labels = len(names)
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    config.architectures = ["BertForSequenceClassification"]
    config.problem_type = "single_label_classification"
    config.problem_type = "single_label_classification"
    return config


def _classification_loss(model: BertForSequenceClassification, batch: dict) -> torch.Tensor:
    return model(**batch).loss


def train_expert(base: BertForPreTraining, tokenizer: PreTrainedTokenizerFast, task: str, split: ClassifierSplit,
                 settings: ClassifierSettings, seed: int,
                 on_step: Callable[[int, float], None] | None = None) -> BertForSequenceClassification:
    """The base encoder (every `bert.*` tensor) plus a fresh head, fine-tuned on one task."""
    torch.manual_seed(seed)
    model = BertForSequenceClassification(expert_config(base.config, task))
    missing, _ = model.load_state_dict(base.state_dict(), strict=False)
    assert all(name.startswith("classifier.") for name in missing), f"base lacks expert tensors: {missing}"
    label_ids = model.config.label2id

    def make_batch(rng: random.Random) -> dict:
        sentences = [split.sample_train(rng) for _ in range(settings.batch)]
        enc = tokenizer([s.text for s in sentences], return_tensors="pt", padding=True)
        return {**enc, "labels": torch.tensor([label_ids[s.labels[task]] for s in sentences])}

    train_loop(model, settings.expert_steps[task], make_batch, _classification_loss, lr=settings.expert_lr, seed=seed,
               on_step=on_step)
    return model


def save_classifier(model, tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


__all__ = [
    "ClassifierSettings",
    "build_tokenizer",
    "random_sentence",
    "save_classifier",
    "train_base",
    "train_expert",
]
