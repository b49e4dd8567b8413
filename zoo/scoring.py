"""A minimal scorer for the zoo's own bars (evaluation/ holds the full one): greedy decoding for the LM family,
argmax through each expert's head for the classifier family."""

from __future__ import annotations

import torch

from .lm_tasks import ANSWER_PREFIX


def extract_answer(text: str) -> str:
    """The text after the last `答え:` (full-width colon too), else the stripped text."""
    for marker in (ANSWER_PREFIX.strip(), "答え："):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
    return text.strip()


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[str], max_new_tokens: int = 12, batch_size: int = 128) -> list[str]:
    """Greedy continuations of chat-formatted prompts, left-padded in batches, decoded without special tokens."""
    model.eval()
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts[start : start + batch_size]
        ]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        generated = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
        new_tokens = generated[:, enc["input_ids"].shape[1] :]
        outputs += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return outputs


def lm_accuracy(model, tokenizer, examples: list[dict]) -> float:
    """Share of examples whose extracted answer equals the reference answer's."""
    answers = greedy_answers(model, tokenizer, [e["prompt"] for e in examples])
    hits = sum(extract_answer(got) == extract_answer(e["answer"]) for got, e in zip(answers, examples))
    return hits / len(examples)


@torch.no_grad()
def classifier_accuracy(model, tokenizer, examples: list[dict], batch_size: int = 256) -> float:
    """Share of examples whose argmax label (through this model's own head and id2label) equals the reference."""
    model.eval()
    hits = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        enc = tokenizer([e["text"] for e in chunk], return_tensors="pt", padding=True)
        predicted = model(**enc).logits.argmax(-1).tolist()
        hits += sum(model.config.id2label[p] == e["label"] for p, e in zip(predicted, chunk))
    return hits / len(examples)
