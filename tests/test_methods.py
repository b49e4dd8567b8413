"""Unit tests of the merge methods as pure tensor functions (hand-made tensors, exact expectations)."""

from __future__ import annotations

import threading

import pytest
import torch

from merging.errors import RecipeError
from merging.methods import chunks, collect_notes, fused, get_method, list_methods, sce, sparsify, task_arithmetic
from merging.methods.chunks import compute_threads
from merging.methods.consensus import disjoint_mean_into
from merging.methods.fused import MIN_FUSED, can_fuse
from merging.methods.sce import UNIFORM_BELOW, coefficients_from_energies
from merging.methods.sce import coefficients as sce_coefficients
from merging.methods.selection import drop_ties_, rank_window_mask, top_k_mask, value_at_rank


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def defaults(name: str, **overrides) -> dict:
    method = get_method(name)
    params = {p.name: p.default for p in method.params if p.scope == "global" and not p.required}
    params.update(overrides)
    return params


def plain_fn(name: str, *args) -> torch.Tensor:
    """`get_method(name).fn(*args)` on the plain (unfused) path: the reference the fused path must equal."""
    with pytest.MonkeyPatch.context() as patch:
        for module in (sce, task_arithmetic):
            patch.setattr(module, "can_fuse", lambda base, tensors: False)
        return get_method(name).fn(*args)


def per_model(name: str, *dicts: dict) -> list[dict]:
    method = get_method(name)
    base = {p.name: p.default for p in method.params if p.scope == "model" and not p.required}
    return [{**base, **d} for d in dicts]


# --- registry --------------------------------------------------------------------------------------------------


def test_registry_has_the_promised_methods_each_documented():
    names = {m.name for m in list_methods()}
    expected = {"linear", "task_arithmetic", "magnitude_prune", "ties", "dare_linear", "dare_ties", "breadcrumbs",
                "breadcrumbs_ties", "della", "della_linear", "sce", "slerp", "nuslerp", "model_stock", "passthrough",
                "multislerp", "karcher", "nearswap"}
    assert expected <= names
    for method in list_methods():
        assert method.explanation and method.formula
        assert all(p.help for p in method.params), method.name
        assert len({p.name for p in method.params}) == len(method.params)


def test_unknown_method_names_the_known_ones():
    with pytest.raises(RecipeError, match="unknown merge_method 'tiez'.*ties.*slerp"):
        get_method("tiez")


# --- selection and sparsifiers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("values", ["random", "ties"])
def test_rank_window_matches_a_full_sort_with_exact_counts(values):
    torch.manual_seed(0)
    for n in (1, 5, 64, 257):
        scores = torch.rand(n) if values == "random" else torch.randint(0, 4, (n,)).float()
        ordered = scores.sort().values
        for start in range(0, n, max(1, n // 6)):
            for count in (0, 1, n // 3, n):
                mask = rank_window_mask(scores, start, start + count)
                stop = min(n, start + count)
                assert int(mask.sum()) == stop - start
                assert torch.equal(scores[mask].sort().values, ordered[start:stop])


@pytest.mark.parametrize("kind", ["random", "ties", "half_zeros", "tiny"])
def test_value_at_rank_on_large_tensors_uses_the_radix_path_exactly(kind):
    n = 60_000  # well above the small-tensor cutoff (8192), so the digit-counting passes run
    torch.manual_seed(1)
    scores = {
        "random": lambda: torch.rand(n),
        "ties": lambda: torch.randint(0, 1000, (n,)).float(),
        "half_zeros": lambda: torch.randn(n).abs() * (torch.rand(n) < 0.5),
        "tiny": lambda: torch.randn(n).abs() * 1e-36,  # near the bottom of the exponent range
    }[kind]()
    ordered = scores.sort().values
    for rank in (0, 1, n // 3, n // 2, n - 1):
        found = value_at_rank(scores, rank)
        value = ordered[rank]
        assert found.value == float(value)
        assert (found.n_less, found.n_equal) == (int((scores < value).sum()), int((scores == value).sum()))
    mask = rank_window_mask(scores, n // 4, n // 4 + n // 2)
    assert torch.equal(scores[mask].sort().values, ordered[n // 4 : n // 4 + n // 2])


def test_magnitude_keeps_exactly_k_largest_even_with_ties():
    delta = torch.tensor([[1.0, -3.0, 2.0, 2.0], [-2.0, 0.5, 0.0, 2.0]])
    kept = sparsify.magnitude(delta, density=0.4)  # k = int(0.4·8) = 3: -3 and two of the four |2|s
    assert int((kept != 0).sum()) == 3
    assert kept[0, 1] == -3.0
    assert sorted(kept[kept != 0].abs().tolist()) == [2.0, 2.0, 3.0]
    assert torch.equal(sparsify.magnitude(delta, density=1.0), delta)
    assert int((sparsify.magnitude(delta, density=0.01) != 0).sum()) == 1  # max(1, int(0.08)) = 1
    assert top_k_mask(torch.zeros(10), 4).sum() == 4


@pytest.mark.parametrize("density", [0.05, 0.3, 0.8])
def test_magnitude_on_a_large_tensor_equals_a_sort_based_top_k(density):
    delta = torch.randn(600, 500, generator=gen(4))  # above the small-tensor cutoff: the bit-pattern path runs
    delta[torch.rand(600, 500, generator=gen(5)) < 0.3] = 0.0
    delta[0, :10] = 0.5  # ties at a magnitude
    delta[1, :10] = -0.5
    k = max(1, int(density * delta.numel()))
    expected = torch.zeros_like(delta).view(-1)
    order = torch.sort(delta.abs().view(-1), descending=True, stable=True).indices[:k]
    expected[order] = delta.view(-1)[order]
    kept = sparsify.magnitude(delta, density)
    assert torch.equal(kept.abs().view(-1).sort().values, expected.abs().sort().values)
    assert int((kept != 0).sum()) == min(k, int((delta != 0).sum()))
    assert torch.equal(kept[kept != 0], delta[kept != 0])


def test_breadcrumbs_drops_outliers_and_smallest():
    delta = torch.arange(1.0, 101.0) * torch.where(torch.arange(100) % 2 == 0, 1.0, -1.0)
    kept = sparsify.breadcrumbs(delta, density=0.5, gamma=0.1)
    magnitudes = sorted(kept[kept != 0].abs().tolist())
    assert magnitudes == [float(v) for v in range(41, 91)]  # top 10 dropped, bottom 40 dropped, 50 remain


def test_dare_keeps_density_fraction_and_preserves_l1():
    delta = torch.randn(200, 500, generator=gen(1))
    kept = sparsify.random(delta, 0.3, True, gen(2))
    fraction = float((kept != 0).float().mean())
    assert abs(fraction - 0.3) < 0.01
    assert torch.isclose(kept.abs().sum(), delta.abs().sum(), rtol=1e-4)
    inverse = sparsify.random(delta, 0.3, "inverse_density", gen(2))
    assert torch.allclose(inverse[inverse != 0], delta[inverse != 0] / 0.3)
    plain = sparsify.random(delta, 0.3, False, gen(2))
    assert torch.equal(plain[plain != 0], delta[plain != 0])


def test_della_keeps_large_magnitudes_more_often():
    rows = torch.arange(1.0, 101.0).repeat(400, 1)  # every row ranks identically: column j has rank j
    kept = sparsify.della(rows, density=0.5, epsilon=0.2, rescale_mode=False, generator=gen(3))
    keep_rate = (kept != 0).float().mean(dim=0)
    assert abs(float(keep_rate[:10].mean()) - 0.31) < 0.05  # p = 0.3 + 0.4·j/99
    assert abs(float(keep_rate[-10:].mean()) - 0.69) < 0.05
    rescaled = sparsify.della(rows, density=0.5, epsilon=0.2, rescale_mode=True, generator=gen(3))
    assert torch.isclose(rescaled.abs().sum(), rows.abs().sum(), rtol=1e-4)
    with pytest.raises(RecipeError, match="lower epsilon below 0.1"):
        sparsify.della(rows, density=0.9, epsilon=0.15, rescale_mode=True, generator=gen(3))


# --- task-arithmetic family ------------------------------------------------------------------------------------


def test_linear_self_merge_is_bit_exact():
    x = torch.randn(7, 9, generator=gen(0))
    out = get_method("linear").fn(None, [x, x], [{"weight": 1.0}, {"weight": 1.0}], {"normalize": True}, None)
    assert torch.equal(out, x)


def test_linear_weighted_average_and_zero_total_is_an_error():
    a, b = torch.full((3,), 2.0), torch.full((3,), 6.0)
    out = get_method("linear").fn(None, [a, b], [{"weight": 3.0}, {"weight": 1.0}], {"normalize": True}, None)
    assert torch.allclose(out, torch.full((3,), 3.0))
    with pytest.raises(RecipeError, match="add up to 0"):
        get_method("linear").fn(None, [a, b], [{"weight": 1.0}, {"weight": -1.0}], {"normalize": True}, None)


def test_task_arithmetic_weight_zero_gives_the_base_and_lambda_scales():
    base = torch.randn(5, 5, generator=gen(0))
    x = base + torch.randn(5, 5, generator=gen(1))
    method = get_method("task_arithmetic")
    out = method.fn(base, [x], [{"weight": 0.0}], defaults("task_arithmetic"), None)
    assert torch.equal(out, base)
    out = method.fn(base, [x], [{"weight": 1.0}], defaults("task_arithmetic", **{"lambda": 0.5}), None)
    assert torch.allclose(out, base + 0.5 * (x - base))


def test_ties_sign_election_and_disjoint_mean_by_hand():
    base = torch.zeros(4)
    x1 = torch.tensor([3.0, -1.0, 2.0, 0.0])
    x2 = torch.tensor([-1.0, -2.0, 2.0, 5.0])
    ties = get_method("ties")
    # sums [2, -3, 4, 5] elect [+, -, +, +]; agreeing entries averaged (zeros never count)
    out = ties.fn(base, [x1, x2], per_model("ties", {"weight": 1.0}, {"weight": 1.0}), defaults("ties"), None)
    assert torch.equal(out, torch.tensor([3.0, -1.5, 2.0, 5.0]))
    # density 0.5 keeps [3, 0, 2, 0] and [0, 0, 3, 5]: all signs +, the lone 0 entry keeps the base
    x2 = torch.tensor([-1.0, -2.0, 3.0, 5.0])
    params = per_model("ties", {"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.5})
    out = ties.fn(base, [x1, x2], params, defaults("ties"), None)
    assert torch.equal(out, torch.tensor([3.0, 0.0, 2.5, 5.0]))


def test_disjoint_mean_kernel_by_hand():
    """consensus.disjoint_mean_into, the one kernel of the plain and fused paths (TIES and SCE)."""
    parts = [torch.tensor([2.0, -1.0, 0.0, 1.0]), torch.tensor([-1.0, -2.0, 0.0, 3.0])]
    # sums [1, -3, 0, 4] elect [+, -, +, +]; agree: [1,0], [1,1], [0,0], [1,1]
    ties = disjoint_mean_into(parts, [1.0, 0.5], None, {}, normalize=True)
    assert torch.equal(ties, torch.tensor([2.0 / 1.0, -3.0 / 1.5, 0.0, 4.0 / 1.5]))  # empty divisor → 1
    sce = disjoint_mean_into(parts, [0.75, 0.25], [0.75, 0.25], {}, normalize=True, min_divisor=1e-6)
    assert torch.allclose(sce, torch.tensor([1.5 / 0.75, -1.25 / 1.0, 0.0, 1.5 / 1.0]))
    assert torch.equal(parts[0], torch.tensor([2.0, -1.0, 0.0, 1.0]))  # inputs untouched
    unnormalized = disjoint_mean_into(parts, [1.0, 1.0], None, {}, normalize=False)
    assert torch.equal(unnormalized, torch.tensor([2.0, -3.0, 0.0, 4.0]))


@pytest.mark.parametrize("target_dtype", [torch.float32, torch.bool])
def test_drop_ties_drops_the_first_and_last_tied_positions_in_flat_order(target_dtype):
    values = torch.tensor([[5.0, 3.0, 3.0], [1.0, 3.0, 3.0]])
    target = torch.ones(2, 3, dtype=target_dtype)
    drop_ties_(target, values == 3.0, first=1, last=2)  # tied at 3: flat positions 1, 2, 4, 5
    assert target.tolist() == [[1, 0, 1], [1, 0, 0]]
    untouched = torch.ones(2, 3, dtype=target_dtype)
    assert torch.equal(drop_ties_(untouched, values == 3.0, first=0, last=-1), torch.ones(2, 3, dtype=target_dtype))


def test_sce_coefficients_from_energies_normalise_or_fall_back_with_a_note():
    with collect_notes() as notes:
        assert coefficients_from_energies([3.0, 1.0]) == [0.75, 0.25]
    assert notes == []
    with collect_notes() as notes:
        assert coefficients_from_energies([UNIFORM_BELOW / 4, UNIFORM_BELOW / 4]) == [0.5, 0.5]
    assert len(notes) == 1 and "uniform" in notes[0]


def test_collected_returns_a_call_s_result_and_its_notes_only():
    from merging.methods.notes import collected

    result, notes = collected(coefficients_from_energies, [UNIFORM_BELOW / 4, UNIFORM_BELOW / 4])
    assert result == [0.5, 0.5] and len(notes) == 1 and "uniform" in notes[0]
    assert collected(coefficients_from_energies, [3.0, 1.0]) == ([0.75, 0.25], [])
    with collect_notes() as outer:  # an enclosing collector does not see the inner call's notes
        collected(coefficients_from_energies, [UNIFORM_BELOW / 4, UNIFORM_BELOW / 4])
    assert outer == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_and_plain_sce_coefficients_are_the_same_numbers(dtype):
    base = torch.randn(700, 400, generator=gen(3)).to(dtype)
    xs = [base + (torch.randn(700, 400, generator=gen(4 + i)) * 0.01 * (i + 1)).to(dtype) for i in range(3)]
    plain = sce_coefficients([x.float() - base.float() for x in xs])
    assert coefficients_from_energies(fused.energies(base, xs)) == plain


def test_weighted_ties_divides_by_the_agreeing_weights():
    base = torch.zeros(2)
    x1, x2 = torch.tensor([1.0, 1.0]), torch.tensor([3.0, -4.0])
    params = per_model("ties", {"weight": 1.0}, {"weight": 0.5})
    # weighted: [1, 1] and [1.5, -2]; sums [2.5, -1] elect [+, -]
    out = get_method("ties").fn(base, [x1, x2], params, defaults("ties"), None)
    assert torch.allclose(out, torch.tensor([2.5 / 1.5, -2.0 / 0.5]))


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties", "della", "della_linear"])
def test_random_methods_same_seed_same_bits_different_seed_differs(name):
    base = torch.randn(32, 32, generator=gen(0))
    xs = [base + torch.randn(32, 32, generator=gen(i + 1)) for i in range(2)]
    models = per_model(name, {"weight": 1.0, "density": 0.5}, {"weight": 0.7, "density": 0.5})
    run = lambda seed: get_method(name).fn(base, xs, models, defaults(name), gen(seed))
    assert torch.equal(run(11), run(11))
    assert not torch.equal(run(11), run(12))


def test_inputs_are_never_modified():
    base = torch.randn(8, 8, generator=gen(0))
    xs = [base + torch.randn(8, 8, generator=gen(i + 1)) for i in range(2)]
    copies = [base.clone()] + [x.clone() for x in xs]
    for name in ("ties", "dare_ties", "breadcrumbs", "della", "sce", "task_arithmetic"):
        method = get_method(name)
        models = per_model(name, {"weight": 1.0}, {"weight": 1.0}) if name != "sce" else [{}, {}]
        method.fn(base, xs, models, defaults(name), gen(0))
    assert all(torch.equal(a, b) for a, b in zip([base, *xs], copies))


# --- sce ---------------------------------------------------------------------------------------------------------


def test_sce_energy_coefficients_and_uniform_fallback_note():
    base = torch.zeros(3)
    xs = [torch.tensor([2.0, 0.0, 0.0]), torch.tensor([1.0, 1.0, 0.0])]
    sce = get_method("sce")
    # energies mean(δ²): 4/3 and 2/3 → c = 2/3, 1/3; every sign agrees (+ or zero)
    with collect_notes() as notes:
        out = sce.fn(base, xs, [{}, {}], defaults("sce"), None)
    assert notes == []
    assert torch.allclose(out, torch.tensor([(2 / 3 * 2 + 1 / 3 * 1) / 1.0, (1 / 3 * 1) / (1 / 3), 0.0]))
    tiny = [x * 1e-4 for x in xs]  # energies ~1e-8: uniform coefficients, and a note says so
    with collect_notes() as notes:
        out = sce.fn(base, tiny, [{}, {}], defaults("sce"), None)
    assert len(notes) == 1 and "uniform" in notes[0]
    assert torch.allclose(out, torch.tensor([1.5e-4, 1e-4, 0.0]))


def test_sce_select_topk_keeps_the_highest_variance_entries():
    base = torch.zeros(4)
    xs = [torch.tensor([1.0, 1.0, 4.0, 0.0]), torch.tensor([1.0, 3.0, -4.0, 0.0])]
    out = get_method("sce").fn(base, xs, [{}, {}], defaults("sce", select_topk=0.5), None)
    # variances [0, 1, 16, 0]: 2 nonzero → k = int(2·0.5) = 1, only entry 2 survives
    assert out[0] == 0 and out[1] == 0 and out[3] == 0 and out[2] != 0


# --- interpolation and others ----------------------------------------------------------------------------------


def test_slerp_endpoints_parallel_fallback_and_norm_on_the_arc():
    slerp = get_method("slerp")
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(slerp.fn(a, [b], [{}], {"t": 0.0}, None), a)
    assert torch.allclose(slerp.fn(a, [b], [{}], {"t": 1.0}, None), b)
    mid = slerp.fn(a, [b], [{}], {"t": 0.5}, None)
    assert torch.allclose(mid, torch.tensor([0.5**0.5, 0.5**0.5]))  # on the arc, not the chord
    parallel = slerp.fn(a, [2 * a], [{}], {"t": 0.25}, None)
    assert torch.allclose(parallel, 1.25 * a)


def test_nuslerp_with_base_interpolates_task_vectors():
    base = torch.tensor([1.0, 1.0])
    xs = [base + torch.tensor([1.0, 0.0]), base + torch.tensor([0.0, 1.0])]
    out = get_method("nuslerp").fn(base, xs, [{"weight": 1.0}, {"weight": 1.0}], defaults("nuslerp"), None)
    assert torch.allclose(out, base + torch.tensor([0.5**0.5, 0.5**0.5]))


def test_model_stock_ratio_from_task_vector_cosine():
    base = torch.zeros(2)
    same = [torch.tensor([1.0, 0.0]), torch.tensor([3.0, 0.0])]  # cos = 1 → t = 1: the plain average
    assert torch.allclose(get_method("model_stock").fn(base, same, [{}, {}], {}, None), torch.tensor([2.0, 0.0]))
    orthogonal = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])]  # cos = 0 → t = 0: the base
    assert torch.allclose(get_method("model_stock").fn(base, orthogonal, [{}, {}], {}, None), base)


def test_karcher_multislerp_nearswap_passthrough_basics():
    x = torch.tensor([3.0, 4.0])
    assert torch.allclose(get_method("karcher").fn(None, [x, x], [{}, {}], {"max_iter": 10, "tol": 1e-5}, None), x)
    ms = get_method("multislerp").fn(None, [x, 2 * x], [{"weight": 1.0}, {"weight": 1.0}],
                                     defaults("multislerp"), None)
    assert torch.allclose(ms, 1.5 * x, atol=1e-5)
    base, other = torch.tensor([0.0, 0.0]), torch.tensor([0.001, 1.0])
    near = get_method("nearswap").fn(base, [other], [{}], {"t": 0.01}, None)
    assert torch.allclose(near, torch.tensor([0.001, 0.01]))  # close entry swapped, far one moved t/|Δ|
    assert torch.equal(get_method("passthrough").fn(None, [x], [{"scale": None}], {}, None), x)
    assert torch.equal(get_method("passthrough").fn(None, [x], [{"scale": 2.0}], {}, None), 2 * x)


# --- the fused big-tensor path equals the plain path -------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2])  # one compute thread: bigger chunks, no hand-over
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["task_arithmetic", "magnitude_prune", "ties", "sce"])
def test_fused_path_for_large_tensors_equals_the_plain_path(name, dtype, threads):
    base = torch.randn(640, 480, generator=gen(0)) * 0.02  # 307 200 elements: fused, over many chunks
    xs = []
    for i in range(3):
        tau = torch.randn(640, 480, generator=gen(10 + i)) * 0.002
        tau[torch.rand(640, 480, generator=gen(20 + i)) < 0.3] = 0.0
        tau[5, :50] = 0.001 * (-1) ** i  # equal magnitudes: ties at the threshold
        xs.append(base + tau)
    base, xs = base.to(dtype), [x.to(dtype) for x in xs]
    assert base.numel() >= MIN_FUSED and can_fuse(base, xs)
    method = get_method(name)
    if name == "sce":
        models = [{}, {}, {}]
    else:
        models = per_model(name, *({"weight": w, "density": d} for w, d in ((1.0, 0.3), (0.5, 0.0), (0.8, 1.0))))
        if name == "task_arithmetic":
            models = [{"weight": m["weight"]} for m in models]
    params = defaults(name, **({"lambda": 0.7} if name != "sce" else {}))
    with compute_threads(threads):
        fused_out = method.fn(base, xs, models, params, None)
    assert fused_out.dtype == torch.float32
    plain = plain_fn(name, base, xs, models, params, None)
    assert torch.allclose(fused_out, plain, atol=1e-7, rtol=1e-6)


def test_fused_threshold_is_exact_when_the_sampled_window_misses(monkeypatch):
    monkeypatch.setattr(fused, "_predicted_window", lambda base, x, rank: (0, 0))  # force the second pass
    base = torch.zeros(700, 400)
    x = torch.randn(700, 400, generator=gen(9))
    x[0, :100] = 0.25  # a block of equal magnitudes around the threshold
    density = float((x.abs() > 0.25).sum() + 50) / x.numel()  # the threshold falls inside the tied block
    params = defaults("magnitude_prune")
    models = per_model("magnitude_prune", {"weight": 1.0, "density": density})
    out = get_method("magnitude_prune").fn(base, [x], models, params, None)
    assert int((out != 0).sum()) == max(1, int(density * x.numel()))
    assert torch.equal(out, plain_fn("magnitude_prune", base, [x], models, params, None))


def test_compute_threads_sets_one_budget_and_restores_it():
    before = torch.get_num_threads()
    seen: set[str] = set()

    def step(start, stop, scratch):
        seen.add(threading.current_thread().name)

    with chunks.compute_threads(1):
        assert torch.get_num_threads() == 1 and chunks.workers() == 1
        chunks.for_each_chunk(1 << 20, step)
        assert seen == {threading.current_thread().name}  # no hand-over to the pool
        base = torch.randn(640, 480, generator=gen(0))
        xs = [base + torch.randn(640, 480, generator=gen(i)) * 0.01 for i in (1, 2)]
        models = per_model("ties", {"weight": 1.0, "density": 0.3}, {"weight": 0.5, "density": 0.6})
        one = get_method("ties").fn(base, xs, models, defaults("ties"), None)
    assert torch.get_num_threads() == before
    with chunks.compute_threads(2):
        assert chunks.workers() == 2
        two = get_method("ties").fn(base, xs, models, defaults("ties"), None)
    assert torch.equal(one, two)


@pytest.mark.parametrize("density", [0.3, 0.55])
def test_fused_threshold_with_few_distinct_magnitudes_keeps_exactly_k(monkeypatch, density):
    """bf16 inputs give few distinct |δ|: the sampled window is then one value, found by counting alone, and whole
    chunks of tied entries are dropped. Exactly k entries stay, the first tied ones in flat order go."""

    def no_fallback(*args):
        raise AssertionError("the sampled window should have held the threshold")

    monkeypatch.setattr(fused, "_threshold_by_digits", no_fallback)
    base = torch.zeros(700, 400)
    x = torch.round(torch.randn(700, 400, generator=gen(5)) * 2) * 0.001  # magnitudes 0, 0.001, 0.002, ...
    params = defaults("magnitude_prune")
    models = per_model("magnitude_prune", {"weight": 1.0, "density": density})
    out = get_method("magnitude_prune").fn(base, [x], models, params, None)
    k = max(1, int(density * x.numel()))
    assert int((out != 0).sum()) == k
    assert torch.equal(out, plain_fn("magnitude_prune", base, [x], models, params, None))


@pytest.mark.parametrize("name", ["dare_ties", "sce", "breadcrumbs_ties"])
def test_reused_scratch_buffers_give_the_same_bits(name):
    """Inside compute_threads() the plain paths keep their full-size scratch between calls; results (and the
    tensors handed back, which are never a reused buffer) stay the same."""

    base = torch.randn(300, 200, generator=gen(0)).bfloat16()
    xs = [(base.float() + torch.randn(300, 200, generator=gen(i)) * 0.01).bfloat16() for i in (1, 2)]
    method = get_method(name)
    models = [{"weight": 1.0, "density": 0.4, "gamma": 0.01}, {"weight": 0.5, "density": 0.6, "gamma": 0.01}]
    models = [{k: v for k, v in m.items() if any(p.name == k for p in method.params)} for m in models]
    params = defaults(name, **({"select_topk": 0.5} if name == "sce" else {}))

    def run():
        return method.fn(base, xs, models, params, torch.Generator().manual_seed(3))

    fresh = run()
    with chunks.compute_threads(1):
        first, second = run(), run()
        assert chunks.full_buffer("delta1", (300, 200), torch.float32, "cpu").data_ptr() == \
            chunks.full_buffer("delta1", (300, 200), torch.float32, "cpu").data_ptr()
        assert first.data_ptr() != second.data_ptr()
    assert torch.equal(fresh, first) and torch.equal(fresh, second)
    assert chunks.full_buffer("delta1", (4,), torch.float32, "cpu").data_ptr() != \
        chunks.full_buffer("delta1", (4,), torch.float32, "cpu").data_ptr()


# --- arcee_fusion, ram, ramplus_tl (mergekit 0.1.5's; parity with mergekit in tests/test_mergekit_parity.py) --------

def test_arcee_fusion_keeps_only_the_outlier_change_of_a_row():
    # one row, so one divergence k > 0 scales every |change|: quartiles 0.2k, 0.3k, 0.4k, cut-off 0.3k + 1.5·0.2k
    base = torch.zeros(1, 5)
    tuned = torch.tensor([[0.1, -0.2, 0.3, 0.4, -5.0]])
    out = get_method("arcee_fusion").fn(base, [tuned], [{}], {}, None)
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 0.0, 0.0, -5.0]]))
    assert torch.equal(tuned, torch.tensor([[0.1, -0.2, 0.3, 0.4, -5.0]])) and not base.any()  # inputs untouched


def test_arcee_fusion_keeps_every_change_when_most_entries_are_unchanged():
    # 3 of 16 entries changed: the quartiles and the median are 0, so the cut-off is 0 and every change is kept
    base = torch.arange(16.0).reshape(4, 4) / 16
    tuned = base.clone()
    tuned[0, 1], tuned[2, 3], tuned[3, 0] = 0.5, -1.0, 2.0
    assert torch.equal(get_method("arcee_fusion").fn(base, [tuned], [{}], {}, None), base + (tuned - base))


def test_ram_keeps_a_lone_change_whole_and_averages_shared_ones():
    base = torch.zeros(4)
    first, second = torch.tensor([1.0, 0.0, 2.0, 1e-6]), torch.tensor([3.0, 0.0, 0.0, 0.0])
    ram = get_method("ram").fn
    # entry 0: both changed it (mean 2); entry 2: only the first (kept whole); entry 3: 1e-6 ≤ ε counts as unchanged
    assert torch.equal(ram(base, [first, second], [{}, {}], {"epsilon": 1e-5}, None), torch.tensor([2.0, 0, 2, 0]))
    # ε = 1.5: the first's change of 1 at entry 0 no longer counts, so the second's 3 is alone there
    assert torch.equal(ram(base, [first, second], [{}, {}], {"epsilon": 1.5}, None), torch.tensor([3.0, 0, 2, 0]))


@pytest.mark.parametrize("r, alpha, boosted", [(0.5, 10.0, 3.0), (0.5, 0.4, 2.4), (0.0, 10.0, 2.0)])
def test_ramplus_tl_boosts_unique_changes_by_the_shared_to_unique_ratio(r, alpha, boosted):
    # the first model changed entries 0 (shared) and 2 (its own): ratio 1/1, boost 1 + r·min(1, α) on entry 2
    base = torch.zeros(4)
    first, second = torch.tensor([1.0, 0.0, 2.0, 1e-6]), torch.tensor([3.0, 0.0, 0.0, 0.0])
    params = {"epsilon": 1e-5, "r": r, "alpha": alpha}
    out = get_method("ramplus_tl").fn(base, [first, second], [{}, {}], params, None)
    assert torch.allclose(out, torch.tensor([2.0, 0.0, boosted, 0.0]), rtol=0, atol=1e-6)
