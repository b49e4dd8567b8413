"""LiveMerger: sources kept once, shared-tensor filtering, the same results as the engine through the one per-tensor
step (merging.step.MergeStep), and the memory plan (7B-shaped configs on meta tensors)."""

from __future__ import annotations

import pytest
import torch

from merging.errors import RecipeError
from merging.live import LiveMerger
from merging.methods.registry import get_method
from merging.recipe import ParameterResolver, load_recipe
from merging.step import MergeStep
from tests.factory import declared_recipe

LAYERS = 2


def make_states(scale: float = 0.02, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    shapes = {
        "model.embed_tokens.weight": (24, 16),
        "model.layers.0.mlp.up_proj.weight": (32, 16),
        "model.layers.0.input_layernorm.weight": (16,),
        "model.layers.1.mlp.up_proj.weight": (32, 16),
        "model.layers.1.self_attn.q_proj.weight": (16, 16),
        "model.norm.weight": (16,),
    }
    base = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    experts = {}
    for key in ("math", "japanese", "strings"):
        experts[key] = {n: w + scale * torch.randn(w.shape, generator=gen) for n, w in base.items()}
    return base, experts


def recipe(method: str, models: str, params: str = "", base: str = "base:") -> str:
    return f"merge_method: {method}\nbase_model: {base.rstrip(':')}\nmodels:\n{models}\nparameters: {{{params}}}\n"


TWO = "- {model: math, parameters: {weight: 0.7, density: 0.5}}\n- {model: japanese, parameters: {weight: 0.4, density: 0.5}}"


@pytest.fixture(scope="module")
def merger():
    base, experts = make_states()
    return LiveMerger(base, experts, LAYERS), base, experts


def test_task_arithmetic_is_base_plus_weighted_task_vectors(merger):
    live, base, experts = merger
    text = recipe("task_arithmetic", "- {model: math, parameters: {weight: 0.7}}\n"
                  "- {model: japanese, parameters: {weight: [0.0, 1.0]}}", "lambda: 2.0")
    out = live.merge(load_recipe(text))
    assert set(out) == set(base)
    for name, w in base.items():
        x = 1.0 if ".layers.1." in name else 0.0  # the gradient's layer position (non-layer tensors: 0)
        expected = w + 2.0 * (0.7 * (experts["math"][name] - w) + x * (experts["japanese"][name] - w))
        torch.testing.assert_close(out[name], expected, rtol=1e-5, atol=1e-6)


def test_only_tensors_shared_by_all_inputs_are_merged():
    base, experts = make_states()
    experts["math"]["score.weight"] = torch.randn(2, 16)  # a per-task head only one expert has
    experts["japanese"]["model.norm.weight"] = torch.randn(8)  # a shape that does not match
    live = LiveMerger(base, experts, LAYERS)
    assert live.unmerged_names == ["model.norm.weight", "score.weight"]
    out = live.merge(load_recipe(recipe("ties", TWO)))
    assert "score.weight" not in out and "model.norm.weight" not in out
    assert set(out) == set(base) - {"model.norm.weight"}


@pytest.mark.parametrize("method, models, params", [
    ("ties", TWO, ""),
    ("dare_ties", TWO, ""),
    ("dare_linear", TWO, "rescale: inverse_density"),
    ("della", TWO, "epsilon: 0.1"),
    ("breadcrumbs_ties", TWO, "gamma: 0.05"),
    ("linear", "- {model: math, parameters: {weight: 1}}\n- {model: strings, parameters: {weight: 3}}", ""),
    ("slerp", "- {model: math}", "t: [0.2, 0.8]"),
])
def test_live_gives_the_engine_step_bit_for_bit(merger, method, models, params):
    live, base, experts = merger
    text = recipe(method, models, params)
    if method == "linear":
        text = text.replace("base_model: base\n", "")
    rec = load_recipe(text)
    out = live.merge(rec, seed=7)
    step = MergeStep(rec, LAYERS, seed=7)  # the engine's own per-tensor step, called directly
    for name in base:
        tensors = [experts[m][name] for m in rec.merge_inputs()]
        expected = step(name, base[name] if step.uses_base else None, tensors)
        assert torch.equal(out[name], expected), name


def test_a_step_prepared_with_names_resolves_them_up_front_and_merges_the_same(merger):
    _, base, experts = merger
    rec = load_recipe(recipe("dare_ties", "- {model: math, parameters: {weight: [0.2, 0.9], density: 0.5}}\n"
                             "- {model: japanese, parameters: {weight: 0.4, density: [{filter: mlp, value: 0.3}, "
                             "{value: 0.7}]}}"))
    prepared = MergeStep(rec, LAYERS, seed=7, names=list(base))
    asked = MergeStep(rec, LAYERS, seed=7)  # resolves each tensor when it is merged
    resolver = ParameterResolver(rec, LAYERS)
    assert set(prepared._resolve.resolved) == set(base) and asked._resolve.resolved == {}
    for name in base:
        assert prepared.parameters(name) == asked.parameters(name) == resolver(name)
        tensors = [experts[m][name] for m in rec.merge_inputs()]
        assert torch.equal(prepared(name, base[name], tensors), asked(name, base[name], tensors)), name


def test_same_seed_same_bits_other_seed_differs(merger):
    live, _, _ = merger
    rec = load_recipe(recipe("dare_linear", TWO))
    first, again, other = live.merge(rec, seed=3), live.merge(rec, seed=3), live.merge(rec, seed=4)
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert any(not torch.equal(first[n], other[n]) for n in first)


def test_kept_sources_survive_merges(merger):
    live, _, _ = merger
    kept = {"base": live.base, **live.models}
    before = {k: {n: t.clone() for n, t in state.items()} for k, state in kept.items()}
    rec = load_recipe(recipe("ties", TWO, "lambda: 3"))
    first = live.merge(rec)
    live.merge(load_recipe(recipe("dare_ties", TWO)))
    assert all(torch.equal(kept[k][n], before[k][n]) for k in before for n in before[k])
    assert all(torch.equal(first[n], live.merge(rec)[n]) for n in first)


def test_linear_of_a_model_with_itself_is_that_model_bit_for_bit():
    base, experts = make_states()
    live = LiveMerger(base, {"a": experts["math"], "b": experts["math"]}, LAYERS)
    out = live.merge(load_recipe("merge_method: linear\nmodels: [{model: a, parameters: {weight: 0.5}}, "
                                 "{model: b, parameters: {weight: 0.5}}]"))
    assert all(torch.equal(out[n], experts["math"][n]) for n in base)


def test_out_dtype_is_applied(merger):
    live, _, _ = merger
    out = live.merge(load_recipe(recipe("ties", TWO) + "out_dtype: bfloat16\n"))
    assert {t.dtype for t in out.values()} == {torch.bfloat16}
    assert {t.dtype for t in live.merge(load_recipe(recipe("ties", TWO))).values()} == {torch.float32}


def test_unknown_models_and_bad_recipes_raise_recipe_errors(merger):
    live, _, _ = merger
    with pytest.raises(RecipeError, match="'physics'.*not loaded here.*'math'"):
        live.merge(load_recipe(recipe("ties", "- {model: physics, parameters: {weight: 1}}")))
    bad = load_recipe(recipe("ties", TWO), validate=False)
    bad.models[0].parameters["density"] = 3.0
    with pytest.raises(RecipeError, match="density"):
        live.merge(bad)


def test_method_notes_are_collected_per_tensor():
    base, experts = make_states(scale=1e-5)  # task vectors so small that SCE's coefficients fall back to uniform
    live = LiveMerger(base, experts, LAYERS)
    live.merge(load_recipe(recipe("sce", "- {model: math}\n- {model: japanese}", "select_topk: 0.5")))
    assert live.notes, "SCE's uniform fallback should be reported"
    assert all(note.split(":")[0] in base for note in live.notes)


def test_magnitude_prune_and_its_mergekit_export_merge_alike(merger):
    live, _, _ = merger
    rec = load_recipe(recipe("magnitude_prune", TWO, "lambda: 1.2"))
    exported = load_recipe(rec.to_mergekit_yaml())
    assert exported.merge_method == "breadcrumbs"
    ours, theirs = live.merge(rec), live.merge(exported)
    assert all(torch.equal(ours[n], theirs[n]) for n in ours)


# --- bf16 sources: outputs keep their dtype, and live equals the engine's folder tensor for tensor -----------------

@pytest.fixture(scope="module")
def bf16_family(tmp_path_factory):
    from tests.factory import make_family

    return make_family(tmp_path_factory.mktemp("bf16"), arch="llama", dtype=torch.bfloat16, hidden=64, seed=5)


def _read(folder) -> dict[str, torch.Tensor]:
    from merging.sources import open_model

    with open_model(folder) as source:
        return {name: source.get(name) for name in source.tensor_names()}


@pytest.mark.parametrize("method, params, compute", [
    ("task_arithmetic", "", "dtype: float32\nout_dtype: bfloat16\n"),  # the app's recipes: float32 compute
    ("ties", "density: 0.4", ""),
    ("dare_ties", "density: 0.5", "dtype: float32\nout_dtype: bfloat16\n"),
    ("ties", "density: 0.4", "dtype: float32\n"),  # dtype alone is the compute and the output dtype (mergekit)
    ("linear", "", ""),
])
def test_bf16_sources_give_a_bf16_folder_equal_to_the_live_merge(bf16_family, tmp_path, method, params, compute):
    from merging.engine import merge_to_folder

    base, (first, second) = str(bf16_family.base), [str(p) for p in bf16_family.experts]
    text = (f"merge_method: {method}\n" + ("" if method == "linear" else f"base_model: {base}\n")
            + f"models:\n- {{model: {first}, parameters: {{weight: 0.7}}}}\n"
            f"- {{model: {second}, parameters: {{weight: 0.5}}}}\nparameters: {{{params}}}\n" + compute)
    rec = load_recipe(text)
    result = merge_to_folder(rec, tmp_path / "out", seed=11)
    folder = _read(tmp_path / "out")
    written = torch.float32 if compute == "dtype: float32\n" else torch.bfloat16
    assert result.out_dtype == str(written).removeprefix("torch.")
    assert {t.dtype for t in folder.values()} == {written}

    live = LiveMerger(_read(base), {first: _read(first), second: _read(second)}, num_layers=2)
    merged = live.merge(rec, seed=11)
    assert set(merged) == set(folder)
    assert all(merged[n].dtype == written and torch.equal(merged[n], folder[n]) for n in folder)

    # In place, into a model in the folder's dtype and a float32 one (how the app loads models on the CPU).
    for dtype in (written, torch.float32):
        target = {n: torch.zeros(t.shape, dtype=dtype) for n, t in folder.items()}
        assert live.merge_into(target, rec, seed=11) == len(folder)
        assert all(torch.equal(target[n], folder[n].to(dtype)) for n in folder)


def test_merge_into_writes_several_targets_and_skips_names_they_lack(merger):
    live, base, _ = merger
    rec = load_recipe(recipe("ties", TWO))
    expected = live.merge(rec)
    first = {n: torch.zeros_like(t) for n, t in base.items()}
    second = {n: torch.zeros_like(t) for n, t in base.items() if "norm" not in n}
    assert live.merge_into([first, second], rec) == len(first) + len(second)
    assert all(torch.equal(first[n], expected[n]) for n in first)
    assert all(torch.equal(second[n], expected[n]) for n in second)


def test_sources_are_kept_in_their_own_dtype(bf16_family):
    base = _read(bf16_family.base)
    live = LiveMerger(base, {"a": _read(bf16_family.experts[0])}, num_layers=2)
    assert {t.dtype for t in live.base.values()} == {torch.bfloat16}
    assert live.nbytes == 2 * sum(t.numel() * 2 for t in base.values())
    assert {t.dtype for t in live.models["a"].values()} == {torch.bfloat16}


# --- the memory plan ----------------------------------------------------------------------------------------------

def test_memory_plan_counts_sources_scratch_and_target():
    from merging.live import live_memory_plan

    gb = 2**30
    fits = live_memory_plan([gb, gb, gb], 10_000_000, model_bytes=gb, available=8 * gb)
    assert fits.live and fits.bytes_needed == 4 * gb + 10_000_000 * 4 * 6 and "within" in fits.reason
    too_big = live_memory_plan([gb, gb, gb], 10_000_000, model_bytes=gb, available=5 * gb)
    assert not too_big.live and "merge to a folder" in too_big.reason
    unknown = live_memory_plan([gb], 1, available=None, device="cuda:7" if not torch.cuda.is_available() else "x")
    assert not unknown.live and unknown.bytes_available is None


def test_available_memory_is_read_on_this_machine():
    from merging.plan import available_bytes

    free = available_bytes("cpu")
    assert free is not None and free > 0


def test_remembered_thresholds_give_the_same_bits_as_a_fresh_merge():
    """Large tensors take the fused path, whose magnitude thresholds live merging keeps per density: moving a weight,
    then the density, then back, each merge equals the method called afresh (the engine's call)."""
    gen = torch.Generator().manual_seed(3)
    base = {"model.layers.0.mlp.up_proj.weight": torch.randn(512, 600, generator=gen).to(torch.bfloat16)}
    experts = {k: {n: (w.float() + 0.02 * torch.randn(w.shape, generator=gen)).to(torch.bfloat16)
                   for n, w in base.items()} for k in ("math", "japanese")}
    live = LiveMerger(base, experts, num_layers=1)
    fn = get_method("ties").fn
    for weights, density in [((0.7, 0.4), 0.3), ((0.2, 0.9), 0.3), ((0.2, 0.9), 0.6), ((0.7, 0.4), 0.3)]:
        rec = load_recipe(recipe("ties", f"- {{model: math, parameters: {{weight: {weights[0]}}}}}\n"
                                         f"- {{model: japanese, parameters: {{weight: {weights[1]}}}}}",
                                 f"density: {density}"))
        out = live.merge(rec)
        for name, weights_of_base in base.items():
            model_params, params = ParameterResolver(rec, 1)(name)
            expected = fn(weights_of_base, [experts["math"][name], experts["japanese"][name]], model_params, params,
                          None)
            assert torch.equal(out[name], expected.to(torch.bfloat16)), (weights, density)
    assert len(live._thresholds) == 2  # one entry per density: the fused path ran and its thresholds were kept


def test_mixed_dtypes_are_promoted_per_tensor_as_the_engine_does(bf16_family, tmp_path):
    from merging.engine import merge_to_folder
    from tests.factory import make_family

    base32 = make_family(tmp_path / "f32", arch="llama", n_experts=0, hidden=64, seed=5).base  # float32 base
    first, second = [str(p) for p in bf16_family.experts]
    rec = load_recipe(f"merge_method: task_arithmetic\nbase_model: {base32}\nmodels:\n"
                      f"- {{model: {first}, parameters: {{weight: 0.6}}}}\n"
                      f"- {{model: {second}, parameters: {{weight: 0.3}}}}\n")
    merge_to_folder(rec, tmp_path / "out")
    folder = _read(tmp_path / "out")
    live = LiveMerger(_read(base32), {first: _read(first), second: _read(second)}, num_layers=2)
    merged = live.merge(rec)
    assert {t.dtype for t in folder.values()} == {torch.float32}  # bf16 experts on a float32 base: float32
    assert all(merged[n].dtype == folder[n].dtype and torch.equal(merged[n], folder[n]) for n in folder)


# --- one per-tensor step: the engine and live merging both merge every tensor through MergeStep --------------------

@pytest.fixture(scope="module")
def small_family(tmp_path_factory):
    from tests.factory import make_family

    family = make_family(tmp_path_factory.mktemp("step"), hidden=32, seed=4)
    states = {str(p): _read(p) for p in [family.base, *family.experts]}
    return family, states


def _all_method_names() -> list[str]:
    from merging.methods.registry import list_methods

    return [m.name for m in list_methods()]


@pytest.mark.parametrize("method_name", _all_method_names())
def test_engine_and_live_give_the_same_tensors_through_one_step(small_family, tmp_path, monkeypatch, method_name):
    from merging.engine import merge_to_folder

    family, states = small_family
    base, experts = str(family.base), [str(p) for p in family.experts]
    rec = declared_recipe(get_method(method_name), base, experts)
    calls: dict[str, list[str]] = {"engine": [], "live": []}
    real_call = MergeStep.__call__
    who = ["engine"]

    def spied(self, name, *args, **kwargs):
        calls[who[0]].append(name)
        return real_call(self, name, *args, **kwargs)

    monkeypatch.setattr(MergeStep, "__call__", spied)
    merge_to_folder(rec, tmp_path / "out", seed=3)
    folder = _read(tmp_path / "out")
    who[0] = "live"
    live = LiveMerger(states[base], {p: states[p] for p in experts}, num_layers=2)
    merged = live.merge(rec, seed=3)
    assert sorted(calls["engine"]) == sorted(calls["live"]) == sorted(folder)  # every tensor, through the step
    assert all(torch.equal(merged[n], folder[n]) for n in folder), method_name


def test_live_rewords_method_failures_as_the_engine_does(merger):
    import dataclasses

    from merging.errors import MergeLabError

    live, _, _ = merger

    def broken(*args):
        raise RuntimeError("value cannot be converted to type float without overflow")

    failing = dataclasses.replace(get_method("ties"), fn=broken)
    rec = dataclasses.replace(load_recipe(recipe("ties", TWO)), method=failing)  # the step calls the recipe's Method
    with pytest.raises(MergeLabError, match="Merging tensor .* with ties failed .*overflow"):
        live.merge(rec)


# --- sources streamed from host memory, and the 7B memory plan -----------------------------------------------------

def test_streamed_sources_merge_to_the_same_bits_and_keep_no_thresholds_for_copies():
    gen = torch.Generator().manual_seed(8)
    base = {"model.layers.0.mlp.up_proj.weight": torch.randn(512, 600, generator=gen).to(torch.bfloat16),
            "model.layers.0.input_layernorm.weight": torch.randn(600, generator=gen).to(torch.bfloat16)}
    experts = {k: {n: (w.float() + 0.02 * torch.randn(w.shape, generator=gen)).to(torch.bfloat16)
                   for n, w in base.items()} for k in ("math", "japanese")}
    resident = LiveMerger(base, experts, num_layers=1)
    streamed = LiveMerger(base, experts, num_layers=1, on_device=1)  # the base held on the device, experts streamed
    assert streamed.streamed == {"math", "japanese"} and not streamed.base_streamed
    plain = "- {model: math, parameters: {weight: 0.7}}\n- {model: japanese, parameters: {weight: 0.4}}"
    for method, models in (("ties", TWO), ("dare_ties", TWO), ("task_arithmetic", plain)):
        rec = load_recipe(recipe(method, models))
        expected, got = resident.merge(rec, seed=2), streamed.merge(rec, seed=2)
        assert all(torch.equal(expected[n], got[n]) for n in expected), method
    assert streamed._thresholds == {}  # thresholds are never keyed by a per-merge copy's address


def _meta_mistral(config_overrides: dict | None = None) -> dict[str, torch.Tensor]:
    """A Mistral-7B-shaped state dict on the meta device (shapes and dtypes, no weights)."""
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=8, **(config_overrides or {}))
    with torch.device("meta"):
        model = MistralForCausalLM(config).to(torch.bfloat16)
    return dict(model.state_dict())


GIB = 2**30


@pytest.fixture(scope="module")
def mistral_7b():
    state = _meta_mistral()
    assert 7.2e9 < sum(t.numel() for t in state.values()) < 7.3e9
    return state


def test_a_7b_base_and_two_experts_are_live_on_an_80gb_gpu_each_held_once(mistral_7b):
    from merging.live import plan_for_states

    plan = plan_for_states([mistral_7b] * 3, device="cuda", available=79 * GIB, host_available=120 * GIB)
    assert plan.live and plan.on_device == 3 and plan.streamed == 0
    source = sum(t.numel() * 2 for t in mistral_7b.values())
    # held once each: 3 sources + the chat model (bf16) + float32 scratch for the embedding (32000 x 4096)
    assert plan.bytes_needed == 4 * source + 32000 * 4096 * 4 * 6
    assert "the base and 2 experts on cuda" in plan.reason


def test_more_experts_on_an_80gb_gpu_are_streamed_from_pinned_host_memory(mistral_7b):
    from merging.live import plan_for_states

    three = plan_for_states([mistral_7b] * 4, device="cuda", available=79 * GIB, host_available=120 * GIB)
    assert three.live and three.on_device + three.streamed == 4
    four = plan_for_states([mistral_7b] * 5, device="cuda", available=79 * GIB, host_available=120 * GIB)
    assert four.live and four.streamed >= 1 and four.on_device + four.streamed == 5
    assert "pinned host memory, streamed" in four.reason
    no_host = plan_for_states([mistral_7b] * 5, device="cuda", available=79 * GIB, host_available=8 * GIB)
    assert not no_host.live and "with the base and" in no_host.reason and "merge to a folder" in no_host.reason


def test_a_7b_pair_is_not_live_on_a_24gb_cpu_machine_and_the_plan_says_what_would_fit(mistral_7b):
    from merging.live import plan_for_states

    plan = plan_for_states([mistral_7b] * 3, device="cpu", available=21 * GIB, model_dtype=torch.float32)
    assert not plan.live
    assert "even fewer experts would not fit" in plan.reason
    assert "8-bit copies of the sources (20.2 GB" in plan.reason and "would not fit either" in plan.reason
    assert "merge to a folder" in plan.reason


def test_float32_7b_sources_on_an_80gb_gpu_stream_what_does_not_fit(mistral_7b):
    from merging.live import plan_for_states

    float32 = {n: torch.empty(t.shape, dtype=torch.float32, device="meta") for n, t in mistral_7b.items()}
    plan = plan_for_states([float32] * 3, device="cuda", available=79 * GIB, host_available=120 * GIB,
                           model_dtype=torch.bfloat16)
    assert plan.live and plan.on_device == 2 and plan.streamed == 1  # float32 folders (the zoo's): 27 GiB each
    small_host = plan_for_states([float32] * 3, device="cuda", available=79 * GIB, host_available=20 * GIB,
                                 model_dtype=torch.bfloat16)
    assert not small_host.live and "with the base and 1 expert live merging would fit" in small_host.reason


@pytest.mark.parametrize("method", ["ties", "dare_ties", "breadcrumbs_ties", "della"])
def test_the_consensus_in_one_chunk_as_on_a_gpu_gives_the_same_bits(monkeypatch, method):
    """On a GPU the TIES consensus runs as one whole-tensor chunk (chunks.whole_tensor); forced here on the CPU so
    that path has run before any GPU run: the same tensors as the chunked CPU path."""
    from merging.methods.chunks import SOLO_CHUNK
    from merging.methods.fused import MIN_FUSED

    gen = torch.Generator().manual_seed(6)
    shape = (400, 500)  # several CPU chunks, under the fused path's size: the plain path's chunked consensus
    assert SOLO_CHUNK < shape[0] * shape[1] < MIN_FUSED
    base = {"model.layers.0.mlp.up_proj.weight": torch.randn(shape, generator=gen)}
    experts = {k: {n: w + 0.02 * torch.randn(w.shape, generator=gen) for n, w in base.items()}
               for k in ("math", "japanese")}
    live = LiveMerger(base, experts, num_layers=1)
    params = {"breadcrumbs_ties": "gamma: 0.05", "della": "epsilon: 0.1"}.get(method, "")
    rec = load_recipe(recipe(method, TWO, params))
    chunked = live.merge(rec, seed=5)
    calls = []
    monkeypatch.setattr("merging.methods.consensus.whole_tensor", lambda tensor: calls.append(1) or True)
    whole = live.merge(rec, seed=5)
    assert calls and all(torch.equal(chunked[n], whole[n]) for n in chunked)


def test_a_fused_float32_merge_is_written_straight_into_the_target():
    gen = torch.Generator().manual_seed(9)
    base = {"model.layers.0.mlp.up_proj.weight": torch.randn(512, 600, generator=gen),  # the fused path's size
            "model.layers.0.input_layernorm.weight": torch.randn(600, generator=gen)}  # the plain path
    experts = {k: {n: w + 0.02 * torch.randn(w.shape, generator=gen) for n, w in base.items()}
               for k in ("math", "japanese")}
    live = LiveMerger(base, experts, num_layers=1)
    for method, models in (("ties", TWO), ("task_arithmetic", ("- {model: math, parameters: {weight: 0.7}}\n"
                                                             "- {model: japanese, parameters: {weight: 0.4}}"))):
        rec = load_recipe(recipe(method, models))
        expected = live.merge(rec)
        target = {n: torch.zeros_like(t) for n, t in base.items()}
        shared = {n: t.data_ptr() == target[n].data_ptr() for n, t in live._merged(rec, 0, target)}
        assert shared == {"model.layers.0.mlp.up_proj.weight": True, "model.layers.0.input_layernorm.weight": False}
        target = {n: torch.zeros_like(t) for n, t in base.items()}
        assert live.merge_into(target, rec) == 2
        assert all(torch.equal(target[n], expected[n]) for n in base), method
