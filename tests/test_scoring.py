"""Fast scoring: the batched greedy loop (stop strings, per-row limits, rows leaving the batch), prompts and chat
history cut to the model's context, bounded task files, and the experts' answers cached across Evaluators."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig

import evaluation.scoring as scoring_module
import merging.jsonl as jsonl_module
from evaluation.agreement import Evaluator
from evaluation.answer_cache import AnswerCache
from evaluation.tasks import load_tasks, tasks_from_records
from inference import format_prompt, generate_batch, load_model, stream_chat
from inference.generation import context_length, fit_messages, fit_prompt, prompt_budget
from merging.errors import TaskSetError
from tests.factory import make_family

PROMPTS = ["1+2=", "abc", "3+4=", "hello there", "9-1=", "xyz"]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("scoring"), n_experts=2, scale=0.2)


@pytest.fixture(scope="module")
def base(family):
    return load_model(family.base)


class _CountInputs:
    """A forward pre-hook on the model that records the width of each input (prompt + cache is what matters)."""

    def __init__(self, model):
        self.widths: list[int] = []
        self.batches: list[int] = []
        self.positions: list[int] = []
        self.calls = 0
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.calls += 1
        ids = kwargs.get("input_ids")
        self.widths.append(ids.shape[1])
        self.batches.append(ids.shape[0])
        positions = kwargs.get("position_ids")
        mask = kwargs.get("attention_mask")
        if positions is not None:
            self.positions.append(int(positions.max()))
        elif mask is not None:  # chat's own greedy loop passes the whole mask (prompt + cache), no position ids
            self.positions.append(mask.shape[1] - 1)

    def remove(self):
        self.handle.remove()


# --- the greedy loop --------------------------------------------------------------------------------------------


def test_batched_loop_gives_transformers_greedy_answers(base):
    ours = generate_batch(base.model, base.tokenizer, PROMPTS, 7, batch_size=4)
    tok = base.tokenizer
    theirs = []
    for prompt in PROMPTS:
        encoded = tok(format_prompt(tok, prompt), return_tensors="pt", add_special_tokens=False)
        config = GenerationConfig(do_sample=False, max_new_tokens=7, pad_token_id=tok.pad_token_id,
                                  eos_token_id=tok.eos_token_id)
        out = base.model.generate(**encoded, generation_config=config)
        theirs.append(tok.decode(out[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    assert ours == theirs


def test_the_prompts_shared_start_is_run_once(base):
    hook = _CountInputs(base.model)
    try:
        generate_batch(base.model, base.tokenizer, PROMPTS, 3)
    finally:
        hook.remove()
    # "user: " (the chat template's start) once for the batch, then each prompt's own tokens.
    assert (hook.batches[0], hook.widths[0]) == (1, len("user: "))
    assert hook.batches[1] == len(PROMPTS) and hook.widths[1] == max(len(p) for p in PROMPTS) + len("\nassistant: ")


def test_stop_strings_cut_each_row_as_if_generated_alone(base):
    plain = generate_batch(base.model, base.tokenizer, PROMPTS, 10)
    # A stop string taken from inside each answer: the row must end just before it.
    stops = [[text[3:5]] if len(text.strip()) >= 5 else [] for text in plain]
    assert any(stops), "the tiny model should say something for some prompts"
    stopped = generate_batch(base.model, base.tokenizer, PROMPTS, 10, stop=stops)
    alone = [generate_batch(base.model, base.tokenizer, [p], 10, stop=[s])[0] for p, s in zip(PROMPTS, stops)]
    assert stopped == alone
    for text, stop, cut in zip(plain, stops, stopped):
        assert cut == (text[:text.find(stop[0])].strip() if stop else text)


def test_rows_leave_the_batch_when_they_stop(base):
    plain = generate_batch(base.model, base.tokenizer, ["1+2="], 12)[0]
    assert len(plain) >= 3
    hook = _CountInputs(base.model)
    try:
        generate_batch(base.model, base.tokenizer, ["1+2="] * 3, 12, stop=plain[1])
    finally:
        hook.remove()
    assert hook.calls < 12  # every row wrote its stop string early: the loop ended long before the limit


def test_a_prompt_longer_than_the_context_is_cut_and_still_generates(base):
    context = context_length(base.model)
    assert context == 128
    long_prompt = "abc " * 200 + "1+2="  # 804 characters = tokens for the character tokenizer
    hook = _CountInputs(base.model)
    try:
        out = generate_batch(base.model, base.tokenizer, [long_prompt, "1+2="], 8)
    finally:
        hook.remove()
    assert isinstance(out[0], str)
    assert max(hook.widths) <= context and max(hook.positions) < context  # the model never saw past its context
    cut = fit_prompt(base.tokenizer, long_prompt, prompt_budget(context, 8))
    assert long_prompt.endswith(cut) and cut.endswith("1+2=")  # the end (the question) is kept
    templated = base.tokenizer(format_prompt(base.tokenizer, cut), add_special_tokens=False)["input_ids"]
    assert len(templated) <= prompt_budget(context, 8)
    assert out[0] == generate_batch(base.model, base.tokenizer, [cut], 8)[0]


def test_a_huge_token_limit_still_leaves_room_for_the_prompt(base):
    assert prompt_budget(128, 10_000) == 64
    out = generate_batch(base.model, base.tokenizer, ["1+2=" * 100], 10_000)
    assert isinstance(out[0], str)


def test_chat_history_keeps_the_system_prompt_and_the_latest_turns(base):
    tok = base.tokenizer
    history = []
    for turn in range(12):
        history += [{"role": "user", "content": f"question {turn} abc"},
                    {"role": "assistant", "content": f"answer {turn} xyz"}]
    messages = [{"role": "system", "content": "be brief"}, *history, {"role": "user", "content": "last 1+2="}]
    kept = fit_messages(tok, messages, 64)
    assert kept[0] == {"role": "system", "content": "be brief"}
    assert kept[-1] == messages[-1] and kept[1]["role"] == "user"
    assert kept[1:] == messages[-(len(kept) - 1):]  # a contiguous end of the conversation
    text = tok.apply_chat_template(kept, tokenize=False, add_generation_prompt=True)
    assert len(tok(text, add_special_tokens=False)["input_ids"]) <= 64
    assert len(kept) < len(messages)


def test_one_message_longer_than_the_context_keeps_its_end(base):
    kept = fit_messages(base.tokenizer, [{"role": "user", "content": "x" * 5000 + " 1+2="}], 40)
    assert len(kept) == 1 and kept[0]["content"].endswith(" 1+2=") and len(kept[0]["content"]) < 40


def test_multi_turn_chat_stays_inside_the_context(base):
    history = []
    for turn in range(10):
        history += [{"role": "user", "content": f"abc {turn} 1+2="}, {"role": "assistant", "content": "3 " * 10}]
    hook = _CountInputs(base.model)
    try:
        reply = list(stream_chat(base.model, base.tokenizer, [*history, {"role": "user", "content": "3+4="}],
                                 max_new_tokens=40, temperature=0))
    finally:
        hook.remove()
    assert reply is not None
    assert max(hook.positions) < context_length(base.model)


# --- task files: stop strings and limits ------------------------------------------------------------------------


def _write(path, records):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    return path


def test_stop_and_token_limit_from_the_task_file_reach_generation(tmp_path, base, monkeypatch):
    path = _write(tmp_path / "t.jsonl", [
        {"task": "a", "prompt": "1+2=", "expert": None, "stop": "\n\n", "max_new_tokens": 5},
        {"task": "a", "prompt": "3+4=", "expert": None, "stop": ["答え", "\n\n"]},
        {"task": "b", "prompt": "abc", "expert": None},
    ])
    tasks = load_tasks(path)
    assert tasks.tasks["a"].stop == ("\n\n", "答え") and tasks.tasks["b"].stop == ()
    seen = {}
    real = scoring_module.generate_batch

    def spy(model, tokenizer, prompts, limits, **kwargs):
        seen.update(zip(prompts, zip(limits, kwargs["stop"])))
        return real(model, tokenizer, prompts, limits, **kwargs)

    monkeypatch.setattr(scoring_module, "generate_batch", spy)
    Evaluator(tasks, {}).score(base)
    assert seen["1+2="] == (5, ("\n\n", "答え")) and seen["3+4="] == (5, ("\n\n", "答え"))
    assert seen["abc"][1] == ()


@pytest.mark.parametrize("stop", ["", [], ["x" * 65], ["a"] * 9, 3, [1]])
def test_bad_stop_strings_are_explained(stop):
    with pytest.raises(TaskSetError, match=r'line 1: "stop" must be'):
        tasks_from_records([{"task": "a", "prompt": "p", "stop": stop}])


def test_a_file_over_the_size_limit_is_refused_at_once(tmp_path, monkeypatch):
    path = tmp_path / "huge.jsonl"
    with path.open("wb") as handle:
        handle.truncate(jsonl_module.MAX_FILE_BYTES + 1)  # sparse: no time spent writing it
    opened = []
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: opened.append(self) or real_open(self, *a, **k))
    with pytest.raises(TaskSetError, match=r"huge.jsonl is 16.0 MB; task files may be at most 16.0 MB"):
        load_tasks(path)
    assert path not in opened  # refused from its size, before any of it is read (not timed: a loaded machine)


def test_a_line_over_the_limit_names_the_line_and_the_limit(tmp_path):
    path = tmp_path / "long.jsonl"
    records = [{"task": "a", "prompt": "1+2="}, {"task": "a", "prompt": "x" * 70_000}]
    _write(path, records)
    with pytest.raises(TaskSetError, match=r"long.jsonl:2: the line is longer than 64 KB.*shorten its prompt"):
        load_tasks(path)


def test_too_many_lines_are_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonl_module, "MAX_LINES", 3)  # the one limit task files and prompts files share
    path = _write(tmp_path / "many.jsonl", [{"task": "a", "prompt": f"{i}+1="} for i in range(5)])
    with pytest.raises(TaskSetError, match=r"many.jsonl:4: the file has more than 3 lines"):
        load_tasks(path)


def test_a_line_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"task": "a", "prompt": "1+2="}\n{"task": "a", "prompt": "caf\xe9"}\n')
    with pytest.raises(TaskSetError, match=r"latin.jsonl is not UTF-8 text \(line 2\): save the file as UTF-8"):
        load_tasks(path)


@pytest.mark.parametrize(("second", "message"), [
    ('{"task": "a", "prompt": "' + "x" * 70_000 + '"}', r"bad.jsonl:2: the line is longer than 64 KB"),
    ('{"task": "a", "prompt": "1+1=", "stop": ' + "[" * 40 + "]" * 40 + "}", r"bad.jsonl:2: JSON nested more than 32"),
    ('{"task": "a", "prompt": "1+1=", ', r"bad.jsonl:2: not valid JSON"),
])
def test_task_files_and_prompts_files_share_one_bounded_reader(tmp_path, second, message):
    """load_tasks reads through merging.jsonl.read_jsonl, as a learned merge's prompts file does: the same bad line
    is refused by both with the same words (a task line nested 40 deep included, which load_tasks once let through
    to its field checks)."""
    from merging.learned.inputs import read_inputs

    path = tmp_path / "bad.jsonl"
    path.write_text('{"task": "a", "prompt": "1+2=", "expert": "a"}\n' + second + "\n", encoding="utf-8")
    with pytest.raises(TaskSetError, match=message):
        load_tasks(path)
    with pytest.raises(TaskSetError, match=message):
        read_inputs(path, ["a"], 1, display="bad.jsonl")


def test_token_limit_over_the_maximum_is_refused():
    with pytest.raises(TaskSetError, match='"max_new_tokens" is 100000'):
        tasks_from_records([{"task": "a", "prompt": "p", "max_new_tokens": 100_000}])


# --- the experts' answers, once per expert folder and task set ---------------------------------------------------


def _tasks():
    return tasks_from_records(
        [{"task": "one", "prompt": p, "expert": "first", "answer_type": "text", "max_new_tokens": 6} for p in PROMPTS]
        + [{"task": "two", "prompt": p, "expert": "second", "answer_type": "text", "max_new_tokens": 6}
           for p in PROMPTS[:3]])


def _generated_prompts(monkeypatch) -> list[str]:
    prompts: list[str] = []
    real = scoring_module.generate_batch

    def spy(model, tokenizer, batch, limits, **kwargs):
        prompts.extend(batch)
        return real(model, tokenizer, batch, limits, **kwargs)

    monkeypatch.setattr(scoring_module, "generate_batch", spy)
    return prompts


def test_a_new_evaluator_reads_the_experts_answers_from_the_cache_folder(family, base, tmp_path, monkeypatch):
    experts = {"first": load_model(family.experts[0]), "second": load_model(family.experts[1])}
    generated = _generated_prompts(monkeypatch)
    first = Evaluator(_tasks(), experts, answer_cache=AnswerCache(tmp_path)).score(base)
    assert len(generated) == 2 * 9 + 9  # two LM experts on every LM task, then the merged model
    assert len(list(tmp_path.glob("*.json"))) == 2  # one answers file per expert
    generated.clear()
    fresh = {"first": load_model(family.experts[0]), "second": load_model(family.experts[1])}
    again = Evaluator(_tasks(), fresh, answer_cache=AnswerCache(tmp_path)).score(base)  # as a new process would
    assert len(generated) == 9  # only the merged model generated
    assert again.to_dict() == first.to_dict()


def test_a_changed_expert_folder_or_setting_is_generated_again(family, tmp_path, monkeypatch):
    cache = AnswerCache(tmp_path)
    expert = load_model(family.experts[0])
    key = cache.model_key(expert)
    weights = next(family.experts[0].glob("*.safetensors"))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # the folder was rewritten
    assert cache.model_key(load_model(family.experts[0])) != key
    assert cache.model_key(load_model(family.experts[0], dtype="bfloat16")) != cache.model_key(
        load_model(family.experts[0]))
    changed = load_model(family.experts[0])
    with torch.no_grad():
        next(changed.model.parameters()).add_(1.0)  # changed in memory after loading
    assert cache.model_key(changed) != cache.model_key(load_model(family.experts[0]))
    generated = _generated_prompts(monkeypatch)
    tasks = tasks_from_records([{"task": "one", "prompt": p, "expert": "first", "answer_type": "text",
                                 "max_new_tokens": 6} for p in PROMPTS])
    Evaluator(tasks, {"first": expert}, answer_cache=cache).expert_predictions()
    count = len(generated)
    Evaluator(tasks, {"first": expert}, answer_cache=cache).expert_predictions()
    assert len(generated) == count  # the same settings: read, not generated
    count = len(generated)
    longer = tasks_from_records([{"task": "one", "prompt": p, "expert": "first", "answer_type": "text",
                                  "max_new_tokens": 7} for p in PROMPTS])
    Evaluator(longer, {"first": expert}, answer_cache=cache).expert_predictions()
    assert len(generated) == count + len(PROMPTS)  # another token limit is another answer


def test_models_without_our_loop_get_the_same_answers_from_transformers_generate(base, monkeypatch):
    from inference import generation

    ours = generate_batch(base.model, base.tokenizer, PROMPTS, [3, 6, 4, 6, 5, 2], stop=["3", None, [], "a", [], []])
    monkeypatch.setattr(generation, "_supports_own_loop", lambda model: False)
    theirs = generate_batch(base.model, base.tokenizer, PROMPTS, [3, 6, 4, 6, 5, 2],
                            stop=["3", None, [], "a", [], []])
    assert theirs == ours


def test_compare_merges_builds_each_merge_when_it_is_scored(family, base):
    from evaluation.agreement import compare_merges

    experts = {"first": load_model(family.experts[0]), "second": load_model(family.experts[1])}
    evaluator = Evaluator(_tasks(), experts)
    built: list[str] = []

    def build(name):
        def make():
            built.append(name)
            return experts[name].model.state_dict()
        return make

    scores = compare_merges(evaluator, {"as first": build("first"), "as second": build("second")})
    assert built == ["first", "second"] and list(scores) == ["as first", "as second"]
    assert scores["as first"].scores["one"].agreement == 1.0  # the first expert's weights give its answers
    assert scores["as second"].to_dict() == evaluator.score(experts["second"]).to_dict()


def test_a_system_prompt_too_long_keeps_its_start_and_the_last_turn(base):
    tok = base.tokenizer
    messages = [{"role": "system", "content": "abc " * 200}, {"role": "user", "content": "1+2="}]
    kept = fit_messages(tok, messages, 64)
    assert messages[0]["content"].startswith(kept[0]["content"]) and len(kept[0]["content"]) <= 16
    assert kept[-1] == messages[-1]
    text = tok.apply_chat_template(kept, tokenize=False, add_generation_prompt=True)
    assert len(tok(text, add_special_tokens=False)["input_ids"]) <= 64
