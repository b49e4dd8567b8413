"""Text generation for scoring (batched, greedy) and for chat (streamed), both fed exactly the prompt format the
zoo is trained on (DEVELOPERS.md "Prompt format"), plus batched classification for *ForSequenceClassification."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from inference.errors import InferenceError


def flatten_content(content: Any) -> str:
    """Message content as plain text. Gradio 6 gives a list of blocks ({"type": "text", "text": ...}, files, ...);
    chat templates expect a string, so text blocks are joined and other blocks dropped."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Mapping):
        if content.get("type", "text") == "text" and "text" in content:
            return str(content["text"])
        return ""
    if isinstance(content, Iterable):
        parts = (flatten_content(block) for block in content)
        return "\n".join(part for part in parts if part)
    return str(content)


def normalize_messages(messages: Iterable[Any], system_prompt: str | None = None) -> list[dict[str, str]]:
    """[{"role", "content": str}] from dicts or Gradio ChatMessage-like objects; extra keys (metadata, options) go."""
    result = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for message in messages:
        role = message.get("role") if isinstance(message, Mapping) else getattr(message, "role", None)
        content = message.get("content") if isinstance(message, Mapping) else getattr(message, "content", None)
        if role is None:
            raise InferenceError("A chat message has no role: give each message a 'role' and a 'content'.")
        result.append({"role": str(role), "content": flatten_content(content)})
    return result


def _has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """The text a model sees for a single user prompt: its chat template with the generation prompt, or the raw
    prompt where it has none."""
    if not _has_chat_template(tokenizer):
        return prompt
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def _encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], templated: bool) -> dict[str, torch.Tensor]:
    # A chat template already holds any special tokens it wants, so they are not added twice.
    tokenizer.padding_side = "left"
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not templated)


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


SMALL_MODEL_PARAMETERS = 20_000_000
_threads_lock = threading.Lock()
_threads_depth = 0
_threads_saved = 0


@contextlib.contextmanager
def single_thread_for_small_models(model: PreTrainedModel) -> Iterator[None]:
    """Run a small CPU model on one intra-op thread. Its matmuls are too small to split, and on a busy 2-core
    machine two threads wait on each other: measured 0.06 s against 0.5-1 s for a batch of 60 zoo prompts."""
    global _threads_depth, _threads_saved
    small = _device(model).type == "cpu" and sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMETERS
    if not small:
        yield
        return
    with _threads_lock:
        if _threads_depth == 0:
            _threads_saved = torch.get_num_threads()
            torch.set_num_threads(1)
        _threads_depth += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_depth -= 1
            if _threads_depth == 0:
                torch.set_num_threads(_threads_saved)


@torch.inference_mode()
def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int | Sequence[int],
    *,
    batch_size: int = 64,
) -> list[str]:
    """Greedy continuations of `prompts` (only the new text, special tokens dropped, stripped), in prompt order.
    `max_new_tokens` is one limit or one per prompt (a batch runs to its largest limit and each row is cut to its
    own, which gives the same text as generating it alone). Prompts are grouped by length so little padding is
    decoded; each stops at eos."""
    limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(limits) != len(prompts):
        raise InferenceError(f"{len(limits)} token limits for {len(prompts)} prompts: give one limit or one each.")
    if any(limit < 1 for limit in limits):
        raise InferenceError(f"max_new_tokens must be at least 1 (got {min(limits)}).")
    templated = _has_chat_template(tokenizer)
    texts = [format_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    outputs: list[str] = [""] * len(texts)
    device = _device(model)
    with single_thread_for_small_models(model):
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            config = GenerationConfig(
                do_sample=False, max_new_tokens=max(limits[i] for i in chunk), pad_token_id=_pad_id(tokenizer),
                eos_token_id=tokenizer.eos_token_id,
            )
            encoded = _encode(tokenizer, [texts[i] for i in chunk], templated)
            encoded = {k: v.to(device) for k, v in encoded.items()}
            generated = model.generate(**encoded, generation_config=config)
            new_tokens = generated[:, encoded["input_ids"].shape[1]:]
            rows = [new_tokens[row, :limits[i]] for row, i in enumerate(chunk)]
            for i, text in zip(chunk, tokenizer.batch_decode(rows, skip_special_tokens=True)):
                outputs[i] = text.strip()
    return outputs


@torch.inference_mode()
def classify_logits(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, batch_size: int = 128
) -> torch.Tensor:
    """Logits (len(texts) x num_labels, float32 on the CPU) of a sequence classifier."""
    device = _device(model)
    rows = []
    with single_thread_for_small_models(model):
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start:start + batch_size])
            # Right padding: encoders with absolute positions (BERT) read left-padded text differently.
            encoded = tokenizer(batch, return_tensors="pt", padding=True, truncation=True, padding_side="right")
            encoded = {k: v.to(device) for k, v in encoded.items()}
            rows.append(model(**encoded).logits.float().cpu())
    if not rows:
        return torch.empty(0, model.config.num_labels)
    return torch.cat(rows)


def classify_batch(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, batch_size: int = 128
) -> list[int]:
    """The argmax label id of each text."""
    return classify_logits(model, tokenizer, texts, batch_size=batch_size).argmax(dim=-1).tolist()


class _StopOnEvent(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> bool:
        return self.event.is_set()


def _chat_text(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    if _has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in messages)


def stream_chat(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    messages: Iterable[Any],
    *,
    max_new_tokens: int = 256,
    temperature: float = 0.7,
    top_p: float = 1.0,
    top_k: int | None = None,
    repetition_penalty: float | None = None,
    system_prompt: str | None = None,
    seed: int | None = None,
    stop_event: threading.Event | None = None,
) -> Iterator[str]:
    """Stream the model's reply to a conversation. Yields the reply SO FAR (cumulative text, ready to show in a
    Gradio chatbot) each time new text arrives. temperature 0 means greedy. Setting `stop_event` ends generation
    early. Message content may be a string or Gradio 6 blocks; it is flattened before the chat template sees it."""
    chat = normalize_messages(messages, system_prompt)
    text = _chat_text(tokenizer, chat)
    encoded = _encode(tokenizer, [text], _has_chat_template(tokenizer))
    encoded = {k: v.to(_device(model)) for k, v in encoded.items()}
    sampling = temperature > 0
    config = GenerationConfig(
        do_sample=sampling, max_new_tokens=max_new_tokens, pad_token_id=_pad_id(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        **({"temperature": temperature, "top_p": top_p} if sampling else {}),
        **({"top_k": top_k} if sampling and top_k else {}),
        **({"repetition_penalty": repetition_penalty} if repetition_penalty else {}),
    )
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    stopping = StoppingCriteriaList([_StopOnEvent(stop_event)]) if stop_event is not None else None
    failure: list[BaseException] = []

    def run() -> None:
        try:
            if seed is not None:
                torch.manual_seed(seed)
            with torch.inference_mode():
                model.generate(**encoded, generation_config=config, streamer=streamer, stopping_criteria=stopping)
        except BaseException as error:  # noqa: BLE001  (any failure must end the stream; re-raised below)
            failure.append(error)
            streamer.end()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    reply = ""
    for piece in streamer:
        if piece:
            reply += piece
            yield reply
    worker.join()
    if failure:
        raise InferenceError(f"Generation failed: {failure[0]}") from failure[0]
