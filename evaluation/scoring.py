"""Running a model over a task set: batched greedy generation (LM tasks) with a per-task token limit and stop
strings, or the argmax label (classification tasks), turned into comparable answers. Generated answers can be read
from and kept in an AnswerCache (the experts' are computed once per family and task set)."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evaluation.answer_cache import AnswerCache, answer_key
from evaluation.answers import answer_body, expected_answer, extract
from evaluation.tasks import Task
from inference.generation import classify_batch, format_prompt, generate_batch

DEFAULT_MAX_NEW_TOKENS = 32  # for tasks with no known answers and no limit of their own
TOKEN_MARGIN = 4  # room for spacing variants beyond the longest expected answer


@dataclass
class TaskOutputs:
    """One model's outputs on one task: raw text (or label name) and the comparable answer of each example."""

    raw: list[str]
    answers: list[str | None]


@dataclass
class Predictions:
    """One model's outputs on a task set, by task name."""

    tasks: dict[str, TaskOutputs] = field(default_factory=dict)


def token_limit(task: Task, tokenizer: PreTrainedTokenizerBase) -> int:
    """The task's own `max_new_tokens`, else enough for the longest expected "答え: X" (an equation task: the prompt
    restated, then the answer, "14+5=19") plus eos and a margin."""
    if task.max_new_tokens:
        return task.max_new_tokens
    known = [(e.input, e.answer) for e in task.examples if e.answer is not None]
    if not known:
        return DEFAULT_MAX_NEW_TOKENS
    if task.answer_type == "equation":  # the prompt as written stands for its restatement (kanji "十四" is no
        # shorter than "14" in the families' tokenizers); a file sets `max_new_tokens` where that does not hold
        written = [f"{prompt}{answer_body(a)}" for prompt, a in known]
    else:
        written = [str(a) if "答え" in str(a) else f"答え: {a}" for _, a in known]
    longest = max(len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in written)
    return longest + 1 + TOKEN_MARGIN


def generate_tasks(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tasks: list[Task], *, batch_size: int | None = None,
    cache: AnswerCache | None = None, model_key: str | None = None,
) -> dict[str, TaskOutputs]:
    """Generate for several tasks in shared batches (each prompt keeps its task's token limit and stop strings):
    fewer, fuller batches than one generate call per task. With a `cache` and the model's `model_key`
    (AnswerCache.model_key), answers already known are read and only the others generated, then stored."""
    prompts, limits, stops, owners = [], [], [], []
    for task in tasks:
        limit = token_limit(task, tokenizer)
        prompts += task.inputs
        limits += [limit] * len(task.examples)
        stops += [task.stop] * len(task.examples)
        owners += [task.name] * len(task.examples)
    raw = _generate_cached(model, tokenizer, prompts, limits, stops, batch_size, cache, model_key)
    result = {}
    for task in tasks:
        texts = [text for text, owner in zip(raw, owners) if owner == task.name]
        result[task.name] = TaskOutputs(raw=texts, answers=[extract(text, task.answer_type) for text in texts])
    return result


def _generate_cached(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                     limits: list[int], stops: list[tuple[str, ...]], batch_size: int | None,
                     cache: AnswerCache | None, model_key: str | None) -> list[str]:
    if not prompts:
        return []
    if cache is None or model_key is None:
        return generate_batch(model, tokenizer, prompts, limits, batch_size=batch_size, stop=stops)
    keys = [answer_key(format_prompt(tokenizer, p), n, s) for p, n, s in zip(prompts, limits, stops)]
    known = cache.lookup(model_key, keys)
    missing = [i for i, key in enumerate(keys) if key not in known]
    if missing:
        texts = generate_batch(model, tokenizer, [prompts[i] for i in missing], [limits[i] for i in missing],
                               batch_size=batch_size, stop=[stops[i] for i in missing])
        fresh = {keys[i]: text for i, text in zip(missing, texts)}
        cache.store(model_key, fresh)
        known = {**known, **fresh}
    return [known[key] for key in keys]


def classify_task(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task, *, batch_size: int = 128
) -> TaskOutputs:
    """Label ids as answers (strings, so they compare like any answer); label names as raw output."""
    ids = classify_batch(model, tokenizer, task.inputs, batch_size=batch_size)
    id2label = getattr(model.config, "id2label", None) or {}
    return TaskOutputs(raw=[str(id2label.get(i, i)) for i in ids], answers=[str(i) for i in ids])


def expected_answers(task: Task, label2id: dict[str, int] | None = None) -> list[str | None]:
    """The task's expected answers in the same form as extracted ones (label names mapped to ids)."""
    if not task.is_classification:
        return [expected_answer(a, task.answer_type) for a in task.answers]
    result: list[str | None] = []
    for label in task.answers:
        if isinstance(label, str) and label2id and label in label2id:
            label = label2id[label]
        result.append(None if label is None else str(label))
    return result

