"""In-memory merging: the sources' tensors are read once and kept on a device, then every recipe (a slider move, a
sweep point, a learned coefficient set) is merged straight into a state dict (`merge`) or into a model's own
parameters in place (`merge_into`, no per-merge copy of the weights).

Results match the streaming engine tensor for tensor by construction: each tensor is merged by the same call the
engine makes (`method.fn(base, tensors, ...)` on the sources' tensors in their own dtype, inputs rounded to the
recipe's `dtype` when it sets one), with the same per-tensor parameter resolution and random generator (seeded from
`zlib.crc32(f"{seed}:{name}")`), and the result is cast to the engine's output dtype.

Why no cache of float32 task vectors: the methods derive them per tensor in float32 from the sources (a bf16
difference is not exact in bf16, so a bf16 cache would break bit-exactness, and a float32 one doubles or triples the
memory of bf16 sources). Measured on 64M bf16 elements, one thread: task_arithmetic's fused path from the sources
0.8 s vs 2.3 s from cached float32 task vectors; ties and dare_ties within 25 % of each other. So the memory plan
counts the sources in their own dtype, and live merging reaches models 2-3x larger than a float32 cache would.

Only tensors that every input has (same shape) are merged; the rest (per-task classifier heads) are left out and
listed in `unmerged_names`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from merging.checks import require_finite
from merging.errors import RecipeError
from merging.methods.chunks import compute_threads, spare_cores
from merging.methods.common import tensor_generator
from merging.methods.fused import remember_thresholds
from merging.methods.registry import collect_notes, get_method
from merging.plan import available_bytes
from merging.recipe import ParameterResolver, Recipe, validate_recipe

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
# Live merging is planned to use at most this share of the device's free memory (the rest: the chat model's
# activations, the evaluator's copies, other sessions, the OS).
MEMORY_SHARE = 0.7


# --- the memory plan --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LivePlan:
    """Whether the sources fit in memory for live merging, and why (`reason` is shown to the user)."""

    live: bool
    device: str
    bytes_needed: int
    bytes_available: int | None
    reason: str


def live_memory_plan(source_bytes: Sequence[int], largest_tensor_elements: int, *, device: str = "cpu",
                     model_bytes: int = 0, available: int | None = None) -> LivePlan:
    """Plan live merging. Needed: the sources' tensors kept in their own dtype (`source_bytes`, one entry per model,
    base included), float32 scratch for the largest tensor (each input widened, plus the result and a workspace),
    and `model_bytes` for the model the merge is written into. Live when that is at most MEMORY_SHARE of the free
    memory of `device` (`available`, measured when None)."""
    inputs = len(source_bytes)
    scratch = largest_tensor_elements * 4 * (inputs + 3)
    needed = int(sum(source_bytes) + scratch + model_bytes)
    free = available_bytes(device) if available is None else available
    gb = 2**30
    if free is None:
        return LivePlan(False, device, needed, None, f"the free memory of {device} cannot be read, so models are "
                        "merged to a folder")
    budget = int(free * MEMORY_SHARE)
    if needed <= budget:
        return LivePlan(True, device, needed, free, f"the sources need {needed / gb:.2f} GB on {device}, within "
                        f"{MEMORY_SHARE:.0%} of its {free / gb:.1f} GB free")
    return LivePlan(False, device, needed, free, f"the sources need {needed / gb:.2f} GB on {device}, more than "
                    f"{MEMORY_SHARE:.0%} of its {free / gb:.1f} GB free: merge to a folder (streamed, a few tensors "
                    "at a time)")


# --- the merger -------------------------------------------------------------------------------------------------

def _promoted(dtypes: Iterable[torch.dtype]) -> torch.dtype:
    """The inputs' dtypes promoted (bf16 with bf16: bf16; bf16 with float32: float32)."""
    result = None
    for dtype in dtypes:
        result = dtype if result is None else torch.promote_types(result, dtype)
    return result or torch.float32


class LiveMerger:
    """Keeps the base's and `models`' shared tensors (their own dtype) on `device`; `merge(recipe, seed)` returns a
    merged state dict and `merge_into(targets, recipe, seed)` writes it into existing tensors. The recipe's `model`
    strings are keys of `models`; the base's key is `recipe.base_model`."""

    def __init__(self, base: Mapping[str, torch.Tensor], models: Mapping[str, Mapping[str, torch.Tensor]],
                 num_layers: int, names: Iterable[str] | None = None, *, device: str = "cpu",
                 threads: int | None = None) -> None:
        self.num_layers = num_layers
        self.device = device
        self.threads = threads or spare_cores()
        wanted = list(names) if names is not None else list(base)
        self.names: list[str] = [
            n for n in wanted
            if n in base and base[n].is_floating_point()
            and all(n in m and m[n].shape == base[n].shape for m in models.values())
        ]
        everything = set(base).union(*(set(m) for m in models.values()))
        self.unmerged_names: list[str] = sorted(everything - set(self.names))
        # The sources' own tensors, as the engine reads them (no widening: the methods widen per tensor).
        self.base: dict[str, torch.Tensor] = {n: base[n].to(device).contiguous() for n in self.names}
        self.models: dict[str, dict[str, torch.Tensor]] = {
            key: {n: m[n].to(device).contiguous() for n in self.names} for key, m in models.items()
        }
        self.notes: list[str] = []  # the last merge's per-tensor notes ("name: message")
        self._dtypes = {t.dtype for state in [self.base, *self.models.values()] for t in state.values()}
        # Magnitude thresholds of the kept tensors per density (a weight slider move reuses them: ties 3x faster).
        self._thresholds: dict = {}

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors kept (base and models)."""
        kept = [self.base, *self.models.values()]
        return sum(t.numel() * t.element_size() for state in kept for t in state.values())

    def source_dtype(self) -> torch.dtype:
        """The engine's output dtype when a recipe sets none: the kept tensors' dtypes promoted (bf16 in → bf16
        out). Per tensor, `tensors()` promotes only the inputs that tensor's merge reads, as the engine does."""
        return _promoted(self._dtypes)

    def output_dtype(self, recipe: Recipe) -> torch.dtype:
        """What the engine writes for this recipe (all sources of one dtype): out_dtype, else dtype, else theirs."""
        chosen = recipe.out_dtype or recipe.dtype
        return _DTYPES[chosen] if chosen in _DTYPES else self.source_dtype()

    def _inputs(self, recipe: Recipe) -> list[str]:
        inputs = recipe.merge_inputs()
        known = set(self.models) | ({recipe.base_model} if recipe.base_model else set())
        missing = [m for m in inputs if m not in known]
        if missing:
            raise RecipeError(f"the recipe names model(s) {', '.join(map(repr, missing))} that are not loaded here; "
                              f"use one of {', '.join(map(repr, self.models))}")
        return inputs

    def _weights(self, key: str, base_key: str | None) -> dict[str, torch.Tensor]:
        return self.base if key not in self.models and key == base_key else self.models[key]

    def tensors(self, recipe: Recipe, seed: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, merged tensor in the engine's output dtype) one tensor at a time; `notes` is set at the end."""
        validate_recipe(recipe)
        method = get_method(recipe.merge_method)
        inputs = self._inputs(recipe)
        resolve = ParameterResolver(recipe, self.num_layers)
        fixed = _DTYPES.get(recipe.out_dtype or recipe.dtype or "")
        compute = _DTYPES.get(recipe.dtype or "")  # the engine rounds inputs to the recipe's dtype first

        def kept_as_is(dtype: torch.dtype) -> bool:
            # Widening bf16/fp16 to float32 is exact and the methods widen per chunk themselves (faster, less memory).
            exact = compute == torch.float32 and dtype in (torch.bfloat16, torch.float16)
            return compute is None or dtype == compute or exact

        def prepared(tensor: torch.Tensor) -> torch.Tensor:
            return tensor if kept_as_is(tensor.dtype) else tensor.to(compute)

        # Thresholds are remembered by the tensors' storage: only for the kept tensors themselves, never for copies
        # (a freed copy's address can come back holding other values).
        if len(self._thresholds) > 64 * max(1, len(self.names)):
            self._thresholds.clear()
        memo = self._thresholds if all(kept_as_is(d) for d in self._dtypes) else None

        sources = [self._weights(key, recipe.base_model) for key in inputs]
        pass_base = method.base == "required" or (method.base == "optional" and recipe.base_model is not None)
        notes: list[str] = []
        with compute_threads(self.threads), remember_thresholds(memo) if memo is not None else nullcontext():
            for name in self.names:
                model_params, params = resolve(name)
                generator = tensor_generator(seed, name, self.device) if method.random else None
                read = ([self.base[name]] if pass_base else []) + [src[name] for src in sources]
                out_dtype = fixed or _promoted(t.dtype for t in read)  # per tensor, as the engine plans it
                with collect_notes() as tensor_notes:
                    base = prepared(read[0]) if pass_base else None
                    result = method.fn(base, [prepared(src[name]) for src in sources], model_params, params,
                                       generator)
                notes += [f"{name}: {message}" for message in tensor_notes]
                require_finite(name, result, recipe, out_dtype)  # a NaN/inf merge is refused, not returned
                yield name, result if result.dtype == out_dtype else result.to(out_dtype)
        self.notes = notes

    def merge(self, recipe: Recipe, seed: int = 0) -> dict[str, torch.Tensor]:
        """The merged state dict (the engine's output dtype), for the tensors all inputs share."""
        return dict(self.tensors(recipe, seed))

    @torch.no_grad()
    def merge_into(self, targets: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]],
                   recipe: Recipe, seed: int = 0) -> int:
        """Merge and copy each tensor into `targets[name]` (e.g. a model's state_dict(): its parameters, written in
        place), one tensor at a time; a target of another dtype gets the result rounded as `.to(dtype)` rounds it
        (float32 → bf16: to nearest even, as the engine's writer). Several targets (one model per task head) get
        the same tensors. Returns how many tensors were written; names a target lacks are skipped."""
        many = [targets] if isinstance(targets, Mapping) else list(targets)
        written = 0
        for name, tensor in self.tensors(recipe, seed):
            for target in many:
                found = target.get(name)
                if found is not None and found.shape == tensor.shape:
                    found.copy_(tensor)
                    written += 1
        return written
