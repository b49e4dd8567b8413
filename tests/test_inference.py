"""inference/: loading, the LRU cache, batched greedy generation and streamed chat on tiny factory models."""

from __future__ import annotations

import itertools
import sys
import threading
import time

import pytest
import torch

from inference import (
    InferenceError,
    LoadedModel,
    ModelCache,
    flatten_content,
    format_prompt,
    generate_batch,
    load_model,
    stream_chat,
)
from merging.errors import MergeLabError, SourceError
from tests.factory import make_family


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("inference"), n_experts=1, dtype=torch.bfloat16)


@pytest.fixture(scope="module")
def loaded(family) -> LoadedModel:
    return load_model(family.base)


def test_load_model_defaults_to_float32_eval_lm_with_left_padding(loaded):
    assert loaded.kind == "lm"
    assert next(loaded.model.parameters()).dtype == torch.float32  # checkpoint is bf16; CPU default is exact
    assert not loaded.model.training
    assert loaded.tokenizer.padding_side == "left"


def test_load_model_honours_dtype(family):
    assert next(load_model(family.base, dtype="bfloat16").model.parameters()).dtype == torch.bfloat16
    with pytest.raises(InferenceError, match="Unknown dtype"):
        load_model(family.base, dtype="float8")


def test_missing_folder_and_missing_config_are_source_errors(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(SourceError, match="config.json"):
        load_model(tmp_path)


def test_bad_quantization_name_is_explained(family):
    with pytest.raises(InferenceError, match="'8bit', '4bit'"):
        load_model(family.base, quantization="3bit")


def test_quantization_without_bitsandbytes_says_what_to_do(family, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(MergeLabError, match="bitsandbytes"):
        load_model(family.base, quantization="4bit")


def test_batched_generation_matches_one_by_one(loaded):
    prompts = ["1+2=", "abc", "twelve plus three is", "答え"]
    batched = generate_batch(loaded.model, loaded.tokenizer, prompts, 6, batch_size=3)
    singles = [generate_batch(loaded.model, loaded.tokenizer, [p], 6)[0] for p in prompts]
    assert batched == singles  # left padding and re-ordering change nothing
    # One character per token (the factory tokenizer decodes with a space between tokens).
    assert all(0 < len(text.replace(" ", "")) <= 6 for text in batched)


def test_per_prompt_token_limits_cut_each_row_as_if_generated_alone(loaded):
    prompts = ["1+2=", "abc", "hello"]
    mixed = generate_batch(loaded.model, loaded.tokenizer, prompts, [2, 6, 4])
    alone = [generate_batch(loaded.model, loaded.tokenizer, [p], n)[0] for p, n in zip(prompts, [2, 6, 4])]
    assert mixed == alone
    with pytest.raises(InferenceError, match="2 token limits for 3 prompts"):
        generate_batch(loaded.model, loaded.tokenizer, prompts, [2, 6])


def test_prompt_goes_through_the_chat_template(loaded):
    assert format_prompt(loaded.tokenizer, "1+2=") == "user: 1+2=\nassistant: "


class _ScriptedHead(torch.nn.Module):
    """An lm_head that emits "7", then eos, then "8" forever, counting its calls (one per decoding step)."""

    def __init__(self, vocab: int, script: list[int]) -> None:
        super().__init__()
        self.vocab, self.script, self.calls = vocab, script, 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        token = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        logits = torch.zeros(*hidden.shape[:-1], self.vocab)
        logits[..., token] = 10.0
        return logits


def test_generation_stops_at_eos_and_returns_only_new_text(family):
    lm = load_model(family.base)
    tok = lm.tokenizer
    seven, eight = tok.convert_tokens_to_ids("7"), tok.convert_tokens_to_ids("8")
    head = _ScriptedHead(lm.model.config.vocab_size, [seven, tok.eos_token_id, eight])
    lm.model.lm_head = head
    assert generate_batch(lm.model, tok, ["1+6="], 10) == ["7"]
    assert head.calls == 2  # stopped right after eos instead of running to 10 tokens


def test_flatten_content_handles_gradio_blocks():
    assert flatten_content("plain") == "plain"
    assert flatten_content([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]) == "a\nb"
    assert flatten_content([{"type": "file", "file": {"path": "x.png"}}, {"type": "text", "text": "hi"}]) == "hi"
    assert flatten_content({"type": "text", "text": "one"}) == "one"
    assert flatten_content(None) == ""


def test_stream_chat_flattens_blocks_and_streams_the_greedy_reply(loaded):
    messages = [{"role": "user", "content": [{"type": "text", "text": "1+2="}], "metadata": None}]
    pieces = list(stream_chat(loaded.model, loaded.tokenizer, messages, max_new_tokens=6, temperature=0))
    assert pieces, "nothing was streamed"
    assert all(b.startswith(a) for a, b in itertools.pairwise(pieces))  # cumulative
    greedy = generate_batch(loaded.model, loaded.tokenizer, ["1+2="], 6)[0]
    assert pieces[-1].replace(" ", "") == greedy.replace(" ", "")


def test_stream_chat_leaves_the_callers_thread_out_of_inference_mode(loaded):
    """A reader that is between pieces, or that stops reading (a closed page), must not be left in inference mode:
    training and in-place weight loads in that thread would fail ("does not require grad")."""
    messages = [{"role": "user", "content": "1+2="}]
    stream = stream_chat(loaded.model, loaded.tokenizer, messages, max_new_tokens=20, temperature=0)
    first = next(stream)
    assert first
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()  # suspended mid-reply
    del stream  # abandoned, never exhausted
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
    weight = torch.ones(2, requires_grad=True)
    (weight * 2).sum().backward()  # what a Learn run in this thread does next
    assert weight.grad is not None


def test_stream_chat_stops_when_asked(loaded):
    stop = threading.Event()
    stop.set()
    messages = [{"role": "user", "content": "abc"}]
    pieces = list(stream_chat(loaded.model, loaded.tokenizer, messages, max_new_tokens=40, temperature=0,
                              stop_event=stop))
    full = list(stream_chat(loaded.model, loaded.tokenizer, messages, max_new_tokens=40, temperature=0))
    stopped = pieces[-1] if pieces else ""
    assert len(stopped.replace(" ", "")) <= 1 < len(full[-1].replace(" ", ""))


def test_stream_chat_samples_with_temperature(loaded):
    messages = [{"role": "user", "content": "abc"}]
    a = list(stream_chat(loaded.model, loaded.tokenizer, messages, max_new_tokens=8, temperature=1.5, seed=1))
    b = list(stream_chat(loaded.model, loaded.tokenizer, messages, max_new_tokens=8, temperature=1.5, seed=1))
    assert a and a[-1] == b[-1]  # seeded sampling is reproducible


def _fake(nbytes: int) -> LoadedModel:
    return LoadedModel(model=torch.nn.Linear(1, 1), tokenizer=None, kind="lm")


def test_cache_evicts_least_recently_used_by_bytes():
    cache = ModelCache(max_bytes=100)
    a, b, c = _fake(40), _fake(40), _fake(40)
    cache.put("a", a, nbytes=40)
    cache.put("b", b, nbytes=40)
    assert cache.get("a") is a  # a is now the most recent
    cache.put("c", c, nbytes=40)  # 120 > 100: b, the least recently used, goes
    assert cache.keys() == ["a", "c"]
    assert cache.get("b") is None
    assert cache.total_bytes == 80


def test_cache_keeps_an_oversized_model_alone():
    cache = ModelCache(max_bytes=100)
    cache.put("small", _fake(10), nbytes=10)
    cache.put("huge", _fake(500), nbytes=500)
    assert cache.keys() == ["huge"]


def test_cache_counts_parameter_bytes(loaded):
    cache = ModelCache(max_bytes=10**9)
    cache.put("m", loaded)
    expected = sum(p.numel() * 4 for p in loaded.model.parameters())
    assert expected <= cache.total_bytes <= expected * 1.5  # parameters plus buffers (rotary tables)


def test_cache_loads_each_key_once_across_threads():
    cache = ModelCache(max_bytes=1000)
    calls = []

    def loader() -> LoadedModel:
        calls.append(1)
        time.sleep(0.05)
        return _fake(1)

    results = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_load("k", loader))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert all(r is results[0] for r in results)


def test_cache_load_reuses_the_loaded_model(family):
    cache = ModelCache(max_bytes=10**9)
    first = cache.load(family.base)
    assert cache.load(family.base) is first
    assert cache.load(family.base, dtype="bfloat16") is not first


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantization_on_a_cpu_says_it_needs_a_gpu_host(family, quantization):
    # bitsandbytes' CPU path fails on some CPUs (shape '[32, 0]' is invalid): 4/8-bit belong to GPU hosts.
    with pytest.raises(InferenceError, match="needs a GPU host"):
        load_model(family.base, quantization=quantization)  # device "cpu", whatever the host has


def test_quantization_without_cuda_says_it_needs_a_gpu_host(family, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InferenceError, match="no CUDA GPU"):
        load_model(family.base, device="cuda", quantization="4bit")


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantization_config_is_built_and_passed_to_from_pretrained(family, monkeypatch, quantization):
    """What the CPU can check honestly: the BitsAndBytesConfig and the loading arguments a GPU host would get."""
    import bitsandbytes  # noqa: F401 - imported before CUDA is faked below (its import probes the GPU)
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from inference import loading

    real = AutoModelForCausalLM.from_pretrained
    captured: dict = {}

    def capture(folder, **kwargs):
        captured.update(kwargs)
        plain = {k: v for k, v in kwargs.items() if k not in ("quantization_config", "device_map")}
        return real(folder, **plain)  # the model itself loads unquantized: the kernels need the GPU

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", capture)
    lm = load_model(family.base, device="cuda", dtype="bfloat16", quantization=quantization)
    config = captured["quantization_config"]
    assert isinstance(config, BitsAndBytesConfig)
    assert captured["device_map"] == {"": "cuda"}
    assert captured["trust_remote_code"] is False and captured["local_files_only"] is True
    if quantization == "4bit":
        assert config.load_in_4bit and not config.load_in_8bit
        assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_compute_dtype == torch.bfloat16
    else:
        assert config.load_in_8bit and not config.load_in_4bit
    assert lm.kind == "lm" and not lm.model.training


def test_quantized_load_failure_is_an_inference_error(family, monkeypatch):
    import bitsandbytes  # noqa: F401 - imported before CUDA is faked below (its import probes the GPU)

    from inference import loading

    def fail(folder, **kwargs):
        raise RuntimeError("shape '[32, 0]' is invalid for input of size 16")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", fail)
    with pytest.raises(InferenceError, match="Could not load .* in 4bit"):
        load_model(family.base, device="cuda", quantization="4bit")


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="bitsandbytes 4-bit/8-bit kernels run on CUDA: this test cannot run on a CPU-only machine "
                           "(the CPU tests above check the config and the refusal)")
@pytest.mark.parametrize("quantization, layer", [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt")])
def test_quantized_loading_on_a_gpu_quantizes_linear_layers(family, quantization, layer):
    lm = load_model(family.base, device="cuda", quantization=quantization)
    assert layer in {type(m).__name__ for m in lm.model.modules()}
    assert len(generate_batch(lm.model, lm.tokenizer, ["1+2="], 3)) == 1


def test_small_models_run_on_one_thread_and_the_setting_is_restored(loaded):
    from inference.generation import single_thread_for_small_models

    before = torch.get_num_threads()
    with single_thread_for_small_models(loaded.model):
        with single_thread_for_small_models(loaded.model):  # nesting keeps one thread until the outermost exits
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_classifier_batches_match_single_texts(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from inference import classify_batch, classify_logits
    from tests.factory import tiny_tokenizer

    torch.manual_seed(0)
    config = BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    lm = load_model(tmp_path)
    assert lm.kind == "classifier" and lm.tokenizer.padding_side == "right"
    texts = ["a b", "the quick brown fox", "x"]
    batched = classify_logits(lm.model, lm.tokenizer, texts)
    singles = torch.cat([classify_logits(lm.model, lm.tokenizer, [t]) for t in texts])
    assert torch.allclose(batched, singles, atol=1e-5)  # padding does not change an encoder's reading
    assert classify_batch(lm.model, lm.tokenizer, texts) == batched.argmax(-1).tolist()


def test_streamed_greedy_chat_is_what_transformers_generate_writes(loaded):
    """The chat's own greedy loop (no generation thread) gives transformers' generate reply, token for token, and
    streams it in growing pieces."""
    for prompt in ("1+2=", "abc", "三+四="):
        messages = [{"role": "user", "content": prompt}]
        own = list(stream_chat(loaded.model, loaded.tokenizer, messages, max_new_tokens=12, temperature=0))
        # repetition_penalty 1.0 changes no logit but takes the generate + streamer path
        reference = list(stream_chat(loaded.model, loaded.tokenizer, messages, max_new_tokens=12, temperature=0,
                                     repetition_penalty=1.0))
        assert own[-1] == reference[-1], prompt
        assert all(b.startswith(a) for a, b in itertools.pairwise(own))
