"""Text generation for scoring (batched, greedy) and for chat (streamed), both fed exactly the prompt format the
zoo is trained on (DEVELOPERS.md "Prompt format"), plus batched classification for *ForSequenceClassification."""

from __future__ import annotations

import contextlib
import inspect
import threading
import time
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


# --- the model's context: prompts and chat history are cut to fit it ------------------------------------------------

# No token of a real tokenizer spans more characters than this, so keeping budget x this many characters of a text's
# end before tokenizing loses nothing and bounds the tokenizer's work (a 5 MB prompt is not tokenized whole).
MAX_CHARS_PER_TOKEN = 32


def context_length(model: PreTrainedModel) -> int | None:
    """How many positions the model was built for (None where its config does not say)."""
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def prompt_budget(context: int | None, max_new_tokens: int) -> int | None:
    """Tokens a prompt may take so that its answer still fits: the context less the answer's limit, where the
    answer is given at most half the context (a huge limit must not leave no room for the question)."""
    if context is None:
        return None
    return context - min(max_new_tokens, max(1, context // 2))


def _count_tokens(tokenizer: PreTrainedTokenizerBase, text: str, templated: bool) -> int:
    # verbose=False: texts longer than the model are expected here (measuring them is the point), no warning.
    return len(tokenizer(text, add_special_tokens=not templated, verbose=False)["input_ids"])


def keep_end(tokenizer: PreTrainedTokenizerBase, text: str, tokens: int) -> str:
    """The end of `text` holding at most about `tokens` tokens (cut at a token boundary)."""
    if tokens <= 0:
        return ""
    text = text[-tokens * MAX_CHARS_PER_TOKEN:]
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                            verbose=False)["offset_mapping"]
        return text if len(offsets) <= tokens else text[offsets[-tokens][0]:]
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return text if len(ids) <= tokens else tokenizer.decode(ids[-tokens:])


def _fit(tokenizer: PreTrainedTokenizerBase, content: str, budget: int, size) -> str:
    """`content` cut from its start until `size(content)` (the tokens of what the model sees) is within budget."""
    if len(content) > budget * MAX_CHARS_PER_TOKEN:
        content = content[-budget * MAX_CHARS_PER_TOKEN:]
    total = size(content)
    if total <= budget:
        return content
    keep = total - size("")  # the content's own tokens, as the template counts them
    for _ in range(8):  # re-tokenizing the cut text can merge tokens differently; a few rounds converge
        keep -= total - budget
        content = keep_end(tokenizer, content, keep)
        total = size(content)
        if total <= budget or not content:
            return content
    return content


def fit_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, budget: int | None) -> str:
    """A single-turn prompt cut from its start (its end, usually the question, is kept) so that the text the model
    sees (chat template included) is at most `budget` tokens."""
    if budget is None:
        return prompt
    templated = _has_chat_template(tokenizer)
    return _fit(tokenizer, prompt, budget, lambda text: _count_tokens(tokenizer, format_prompt(tokenizer, text),
                                                                      templated))


def fit_messages(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], budget: int | None
                 ) -> list[dict[str, str]]:
    """The end of a conversation that fits `budget` tokens once templated: system messages stay, then the latest
    turns (starting at a user turn); where even the last turn is too long, its start is cut. A system prompt over half
    the budget is cut to its start (a quarter of the budget), so the latest turn keeps room."""
    if budget is None or not messages:
        return messages
    templated = _has_chat_template(tokenizer)

    def size(chat: list[dict[str, str]]) -> int:
        return _count_tokens(tokenizer, _chat_text(tokenizer, chat), templated)

    system = [m for m in messages if m["role"] == "system"]
    turns = [m for m in messages if m["role"] != "system"]
    if system and size(system) > budget // 2:
        system = [{"role": "system", "content": _keep_start(tokenizer, system[0]["content"], budget // 4)}]
    kept: list[dict[str, str]] = []
    for message in reversed(turns):
        if len(message["content"]) > budget * MAX_CHARS_PER_TOKEN or size([*system, message, *kept]) > budget:
            break
        kept.insert(0, message)
    while kept and kept[0]["role"] != "user" and len(kept) > 1:
        kept.pop(0)  # a conversation the model sees starts with the user
    if not kept and turns:
        last = turns[-1]
        content = _fit(tokenizer, last["content"], budget,
                       lambda text: size([*system, {"role": last["role"], "content": text}]))
        kept = [{"role": last["role"], "content": content}]
    return [*system, *kept]


def _keep_start(tokenizer: PreTrainedTokenizerBase, text: str, tokens: int) -> str:
    """The start of `text` holding at most about `tokens` tokens (cut at a token boundary)."""
    if tokens <= 0:
        return ""
    text = text[:tokens * MAX_CHARS_PER_TOKEN]
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                            verbose=False)["offset_mapping"]
        return text if len(offsets) <= tokens else text[:offsets[tokens - 1][1]]
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return text if len(ids) <= tokens else tokenizer.decode(ids[:tokens], skip_special_tokens=True)


# --- batched greedy generation ---------------------------------------------------------------------------------------

def default_batch_size(model: PreTrainedModel) -> int:
    """Prompts per forward pass: large on an accelerator (it is idle otherwise), moderate on a CPU, where a
    batch's cost grows with its rows and finished rows are dropped anyway."""
    if _device(model).type != "cpu":
        return 64
    small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMETERS
    return 256 if small else 32


def scoring_dtype(device: str = "cpu") -> str | None:
    """The dtype to load models in for batched scoring: the checkpoint's own ("auto") on an accelerator and on CPUs
    with native bf16 matmuls (AVX512-BF16: a bf16 SmolLM2-135M prefill measured 2.4x faster there than float32),
    else None (load_model's float32 on the CPU, where bf16 would be emulated and slow)."""
    if not str(device).startswith("cpu"):
        return "auto"
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    try:
        return "auto" if native is not None and native() else None
    except RuntimeError:
        return None


def _stop_lists(stop: Sequence[str] | Sequence[Sequence[str]] | None, count: int) -> list[tuple[str, ...]]:
    """One tuple of stop strings per prompt from None, one list for all, or one list per prompt."""
    if stop is None:
        return [()] * count
    if isinstance(stop, str):
        return [(stop,)] * count
    items = list(stop)
    if items and all(isinstance(s, str) for s in items):
        return [tuple(s for s in items if s)] * count
    if len(items) != count:
        raise InferenceError(f"{len(items)} stop lists for {count} prompts: give one list or one each.")
    return [tuple(s for s in ([row] if isinstance(row, str) else (row or ())) if s) for row in items]


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to (not including) the earliest stop string in it."""
    ends = [text.find(s) for s in stops if s and s in text]
    return text[:min(ends)] if ends else text


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return {i for i in ids if i is not None}


def _supports_own_loop(model: PreTrainedModel) -> bool:
    names = inspect.signature(model.forward).parameters
    return all(name in names for name in ("position_ids", "past_key_values", "attention_mask"))


@torch.inference_mode()
def _greedy_rows(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[list[int]],
                 limits: list[int], stops: list[tuple[str, ...]], eos: set[int], pad_id: int) -> list[list[int]]:
    """Greedy decoding of `rows` with a KV cache. A row leaves the batch (and the cache) as soon as it emits eos,
    reaches its limit or writes one of its stop strings, so the batch shrinks as answers finish and the loop ends
    when every row has."""
    device = _device(model)
    cache, logits, mask, next_position = _prefill(model, rows, pad_id)
    active = list(range(len(rows)))
    generated: list[list[int]] = [[] for _ in rows]
    finished: set[int] = set()
    while True:
        tokens = logits.argmax(-1).tolist()
        keep = []
        for slot, row in enumerate(active):
            if row in finished:
                continue
            if tokens[slot] in eos or _append_and_check(tokenizer, generated[row], tokens[slot], limits[row],
                                                        stops[row]):
                finished.add(row)
                continue
            keep.append(slot)
        if not keep:
            return generated
        step = torch.tensor([tokens[slot] for slot in keep], dtype=torch.long, device=device)[:, None]
        if len(keep) < len(active) and hasattr(cache, "batch_select_indices"):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, next_position = mask[index], next_position[index]
            active = [active[slot] for slot in keep]
        elif len(keep) < len(active):  # a cache that cannot drop rows: finished rows ride along, ignored
            step = torch.tensor(tokens, dtype=torch.long, device=device)[:, None]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        out = model(input_ids=step, attention_mask=mask, position_ids=next_position[:, None], past_key_values=cache,
                    use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1]
        next_position = next_position + 1


MIN_SHARED_PREFIX = 4  # tokens; below this a separate prefix pass costs more than it saves


def _shared_prefix(rows: list[list[int]]) -> int:
    """Tokens every row starts with (the chat template's system prompt and turn header), leaving each row at least
    one token of its own."""
    shortest = min(len(r) for r in rows)
    length = 0
    while length < shortest - 1 and all(r[length] == rows[0][length] for r in rows):
        length += 1
    return length


def _prefill(model: PreTrainedModel, rows: list[list[int]], pad_id: int):
    """Run the prompts through the model: (cache, last logits, attention mask, next position per row).

    The prefix all rows share is run once and its cache copied to every row; each row's own tokens follow it,
    right-aligned, with padding between the prefix and them (masked out; positions count real tokens only). Where no
    prefix is shared (or the cache cannot be copied), rows are simply left-padded."""
    device = _device(model)
    extra = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    shared = _shared_prefix(rows) if len(rows) > 1 else 0
    cache = None
    if shared >= MIN_SHARED_PREFIX:
        prefix = torch.tensor([rows[0][:shared]], dtype=torch.long, device=device)
        cache = model(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True, **extra).past_key_values
        if hasattr(cache, "batch_repeat_interleave"):
            cache.batch_repeat_interleave(len(rows))
        else:
            cache, shared = None, 0
    else:
        shared = 0
    own = [r[shared:] for r in rows]
    width = max(len(r) for r in own)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    own_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(own):
        input_ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        own_mask[i, width - len(row):] = 1
    positions = shared + (own_mask.cumsum(-1) - 1).clamp(min=0)
    mask = torch.cat([torch.ones((len(rows), shared), dtype=torch.long), own_mask], dim=1)
    input_ids, mask, positions = input_ids.to(device), mask.to(device), positions.to(device)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                use_cache=True, **extra)
    return out.past_key_values, out.logits[:, -1], mask, positions[:, -1] + 1


def _append_and_check(tokenizer: PreTrainedTokenizerBase, generated: list[int], token: int, limit: int,
                      stops: tuple[str, ...]) -> bool:
    """Add `token` to a row; True when the row is finished (its limit reached or a stop string written)."""
    generated.append(token)
    if len(generated) >= limit:
        return True
    return bool(stops) and any(s in tokenizer.decode(generated, skip_special_tokens=True) for s in stops)


def _accepts(model: PreTrainedModel, name: str) -> bool:
    return name in inspect.signature(model.forward).parameters


@torch.inference_mode()
def generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int | Sequence[int],
    *,
    batch_size: int | None = None,
    stop: Sequence[str] | Sequence[Sequence[str]] | None = None,
) -> list[str]:
    """Greedy continuations of `prompts` (only the new text, special tokens dropped, cut before the first stop
    string, stripped), in prompt order. `max_new_tokens` is one limit or one per prompt; `stop` is one list of stop
    strings or one per prompt. Each row gives the same text as generated alone: it stops at eos, its own limit or
    its stop string, and leaves the batch then. Prompts longer than the model's context less the answer's room are
    cut from their start (see fit_prompt). Prompts are grouped by length so little padding is decoded."""
    limits = _token_limits(max_new_tokens, len(prompts))
    stops = _stop_lists(stop, len(prompts))
    if not prompts:
        return []
    rows, row_limits = _prompt_rows(model, tokenizer, prompts, limits)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    outputs: list[str] = [""] * len(rows)
    size = batch_size or default_batch_size(model)
    eos, pad_id = _eos_ids(model, tokenizer), _pad_id(tokenizer)
    with single_thread_for_small_models(model):
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            new = _generate_rows(model, tokenizer, [rows[i] for i in chunk], [row_limits[i] for i in chunk],
                                 [stops[i] for i in chunk], eos, pad_id)
            for i, tokens in zip(chunk, new):
                outputs[i] = cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), stops[i]).strip()
    return outputs


def _token_limits(max_new_tokens: int | Sequence[int], count: int) -> list[int]:
    """One answer limit per prompt, from one limit for all or one each."""
    limits = [max_new_tokens] * count if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(limits) != count:
        raise InferenceError(f"{len(limits)} token limits for {count} prompts: give one limit or one each.")
    if any(limit < 1 for limit in limits):
        raise InferenceError(f"max_new_tokens must be at least 1 (got {min(limits)}).")
    return limits


def _prompt_rows(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
                 limits: list[int]) -> tuple[list[list[int]], list[int]]:
    """The token ids the model sees for each prompt (templated, cut to leave its answer room in the context) and
    each answer's limit, lowered where the prompt leaves less room than asked."""
    templated = _has_chat_template(tokenizer)
    context = context_length(model)
    rows, row_limits = [], []
    for prompt, limit in zip(prompts, limits):
        budget = prompt_budget(context, limit)
        ids = tokenizer(format_prompt(tokenizer, fit_prompt(tokenizer, prompt, budget)),
                        add_special_tokens=not templated, verbose=False)["input_ids"]
        if budget is not None:
            ids = ids[-budget:]  # last resort where the template alone is longer than the budget
        rows.append(ids)
        row_limits.append(limit if context is None else max(1, min(limit, context - len(ids))))
    return rows, row_limits


def _generate_rows(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[list[int]],
                   limits: list[int], stops: list[tuple[str, ...]], eos: set[int], pad_id: int | None
                   ) -> list[list[int]]:
    """Our greedy loop where the model takes positions and a cache (decoder LMs of transformers), else
    transformers' generate run to the longest limit, each row cut to its own limit and eos afterwards."""
    pad = pad_id if pad_id is not None else 0
    if _supports_own_loop(model):
        return _greedy_rows(model, tokenizer, rows, limits, stops, eos, pad)
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=_device(model))
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=_device(model))
    config = GenerationConfig(do_sample=False, max_new_tokens=max(limits), pad_token_id=pad,
                              eos_token_id=sorted(eos) or None)
    generated = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)[:, width:]
    result = []
    for row, limit in zip(generated.tolist(), limits):
        row = row[:limit]
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        result.append(row[:cut])
    return result


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
    encoded, max_new_tokens = _chat_inputs(model, tokenizer, messages, system_prompt, max_new_tokens)
    if temperature <= 0 and not repetition_penalty and _supports_own_loop(model):
        yield from _stream_greedy(model, tokenizer, encoded, max_new_tokens, stop_event)
        return
    config = _chat_config(tokenizer, max_new_tokens, temperature, top_p, top_k, repetition_penalty)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    stopping = StoppingCriteriaList([_StopOnEvent(stop_event)]) if stop_event is not None else None
    worker, failure = _generate_in_background(model, encoded, config, streamer, stopping, seed)
    reply = ""
    for piece in streamer:
        if piece:
            reply += piece
            yield reply
    worker.join()
    if failure:
        raise InferenceError(f"Generation failed: {failure[0]}") from failure[0]


STREAM_INTERVAL_S = 0.1  # a streamed reply is re-sent at most this often (the first piece at once)


def _stream_greedy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, encoded: dict[str, torch.Tensor],
                   max_new_tokens: int, stop_event: threading.Event | None) -> Iterator[str]:
    """Greedy decoding with a KV cache in the caller's thread, yielding the reply so far: the first piece at once,
    then at most every STREAM_INTERVAL_S, and the whole reply at the end. No generation thread and no streamer
    queue: on a 2-core machine the thread hand-offs and the page's work per token cost /chat 40 % of
    model.generate's speed (docs/benchmarks.md, "Chat")."""
    eos = _eos_ids(model, tokenizer)
    generated: list[int] = []
    reply, last_sent = "", None
    for token in _greedy_tokens(model, encoded, max_new_tokens, eos, stop_event):
        generated.append(token)
        now = time.monotonic()
        if last_sent is not None and now - last_sent < STREAM_INTERVAL_S:
            continue
        text = tokenizer.decode(generated, skip_special_tokens=True)
        if text and not text.endswith("\ufffd") and text != reply:  # never half a multi-byte character
            reply, last_sent = text, now
            yield reply
    text = tokenizer.decode(generated, skip_special_tokens=True)
    if text != reply or not reply:
        yield text


def _greedy_tokens(model: PreTrainedModel, encoded: dict[str, torch.Tensor], max_new_tokens: int, eos: set[int],
                   stop_event: threading.Event | None) -> Iterator[int]:
    """One conversation's greedy tokens, eos left out, until eos, the limit or `stop_event`.

    Inference mode is entered around each forward pass and never held across a `yield`: a generator suspended
    inside `with torch.inference_mode()` leaves the consumer's thread in inference mode until it is resumed, or for
    good when it is abandoned (training and in-place weight loads in that thread then fail)."""
    extra = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    with torch.inference_mode():
        out = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"], use_cache=True,
                    **extra)
    mask = encoded["attention_mask"]
    for count in range(1, max_new_tokens + 1):
        with torch.inference_mode():
            token = int(out.logits[0, -1].argmax())
        if token in eos or (stop_event is not None and stop_event.is_set()):
            return
        yield token
        if count == max_new_tokens:
            return  # no forward pass for a token that will not be taken
        with torch.inference_mode():
            mask = torch.cat([mask, mask.new_ones((1, 1))], dim=1)
            step = torch.tensor([[token]], dtype=torch.long, device=mask.device)
            out = model(input_ids=step, attention_mask=mask, past_key_values=out.past_key_values, use_cache=True,
                        **extra)


def _chat_inputs(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, messages: Iterable[Any],
                 system_prompt: str | None, max_new_tokens: int) -> tuple[dict[str, torch.Tensor], int]:
    """The conversation encoded on the model's device, cut to leave the answer room in the context, and the answer's
    limit, lowered to what the (cut) conversation leaves of the context."""
    context = context_length(model)
    budget = prompt_budget(context, max_new_tokens)
    chat = fit_messages(tokenizer, normalize_messages(messages, system_prompt), budget)
    encoded = _encode(tokenizer, [_chat_text(tokenizer, chat)], _has_chat_template(tokenizer))
    if budget is not None:  # last resort where the template alone is longer than the budget
        encoded = {k: v[:, -budget:] for k, v in encoded.items()}
    encoded = {k: v.to(_device(model)) for k, v in encoded.items()}
    if context is not None:
        max_new_tokens = max(1, min(max_new_tokens, context - encoded["input_ids"].shape[1]))
    return encoded, max_new_tokens


def _chat_config(tokenizer: PreTrainedTokenizerBase, max_new_tokens: int, temperature: float, top_p: float,
                 top_k: int | None, repetition_penalty: float | None) -> GenerationConfig:
    """Generation settings for a reply: greedy at temperature 0, where the sampling settings are left out
    (transformers warns about them on a greedy config)."""
    sampling = temperature > 0
    return GenerationConfig(
        do_sample=sampling, max_new_tokens=max_new_tokens, pad_token_id=_pad_id(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        **({"temperature": temperature, "top_p": top_p} if sampling else {}),
        **({"top_k": top_k} if sampling and top_k else {}),
        **({"repetition_penalty": repetition_penalty} if repetition_penalty else {}),
    )


def _generate_in_background(model: PreTrainedModel, encoded: dict[str, torch.Tensor], config: GenerationConfig,
                            streamer: TextIteratorStreamer, stopping: StoppingCriteriaList | None, seed: int | None
                            ) -> tuple[threading.Thread, list[BaseException]]:
    """Start generate on a daemon thread that feeds `streamer`; the returned list receives its failure, if any
    (which also ends the stream, so the reader is never left waiting)."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            if seed is not None:
                torch.manual_seed(seed)
            with torch.inference_mode():
                model.generate(**encoded, generation_config=config, streamer=streamer, stopping_criteria=stopping)
        except BaseException as error:  # noqa: BLE001  (any failure must end the stream; re-raised by the reader)
            failure.append(error)
            streamer.end()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    return worker, failure
