"""In-memory merging: the sources' tensors are read once and kept on a device, then every recipe (a slider move, a
sweep point, a learned coefficient set) is merged straight into a state dict (`merge`) or into a model's own
parameters in place (`merge_into`, no per-merge copy of the weights).

Results match the streaming engine tensor for tensor by construction: each tensor is merged by the engine's own step
(merging.step.MergeStep: the same parameter resolution, random generator, method call and checks) on the sources'
tensors in their own dtype (inputs rounded to the recipe's `dtype` when it sets one), and the result is cast to the
engine's output dtype.

Why no cache of float32 task vectors: the methods derive them per tensor in float32 from the sources (a bf16
difference is not exact in bf16, so a bf16 cache would break bit-exactness, and a float32 one doubles or triples the
memory of bf16 sources). Measured on 64M bf16 elements, one thread: task_arithmetic's fused path from the sources
0.8 s vs 2.3 s from cached float32 task vectors; ties and dare_ties within 25 % of each other. So the memory plan
counts the sources in their own dtype, and live merging reaches models 2-3x larger than a float32 cache would.

Each source is held once, in its own dtype: on the device, or (where device memory is short: a 7B base and three
experts on one 80 GB GPU) in pinned host memory, streamed to the device tensor by tensor as the merge reaches it.
`live_memory_plan` decides which, and says what would fit when nothing does. Every tensor is merged through the
engine's own per-tensor step (merging.step.MergeStep), then written into the caller's tensors (`merge_into`).

Only tensors that every input has (same shape) are merged; the rest (per-task classifier heads) are left out and
listed in `unmerged_names`.
"""


from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from merging.dtypes import DTYPES
from merging.errors import RecipeError
from merging.methods.chunks import compute_threads, spare_cores
from merging.methods.fused import reusing
from merging.plan import available_bytes
from merging.recipe import Recipe
from merging.step import MergeStep

# On the CPU, live merging is planned to use at most this share of the free memory (the rest: the evaluator's
# copies, other sessions, the OS). Sources streamed to a GPU are held in host memory under the same share.
MEMORY_SHARE = 0.7
# On a GPU: what stays free for activations and the KV cache of batched scoring (Mistral-7B, 32 prompts x 512
# tokens: about 2 GB of cache), at least this much or a tenth of the free memory.
DEVICE_RESERVE_BYTES = 8 * 2**30
_GB = 2**30


# --- the memory plan --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LivePlan:
    """Whether the sources fit in memory for live merging, what is held where, and why (`reason` is shown to the
    user; where live merging is off it says what would fit)."""

    live: bool
    device: str
    bytes_needed: int  # everything live merging holds: sources, scratch and the model merged into
    bytes_available: int | None  # free memory of `device`
    reason: str
    on_device: int = 0  # sources held on the device, in order (the base first)
    streamed: int = 0  # sources held in pinned host memory and streamed to the device per tensor
    host_bytes: int = 0  # host memory those streamed sources hold


def live_memory_plan(source_bytes: Sequence[int], largest_tensor_elements: int, *, device: str = "cpu",
                     model_bytes: int = 0, available: int | None = None, host_available: int | None = None,
                     source_elements: Sequence[int] | None = None) -> LivePlan:
    """Plan live merging. Held: the sources in their own dtype (`source_bytes`, one entry per model, the base
    first), float32 scratch for the largest tensor (each input widened, plus the result and a workspace), and
    `model_bytes` for the model the merge is written into. On the CPU all of it within MEMORY_SHARE of the free
    memory. On a GPU the model and the scratch on the device, as many sources beside them as leave
    DEVICE_RESERVE_BYTES free, and the rest in pinned host memory (within MEMORY_SHARE of it), streamed per tensor.
    `available` / `host_available`: free bytes, measured when None. `source_elements` (per source) sizes the
    8-bit suggestion; without it the sources are taken as 16-bit."""
    free = available_bytes(device) if available is None else available
    if free is None:
        return LivePlan(False, device, 0, None, f"the free memory of {device} cannot be read, so models are merged "
                        "to a folder")
    plan = _place(source_bytes, largest_tensor_elements, device, model_bytes, free, host_available)
    if plan.live:
        return plan
    elements = list(source_elements) if source_elements is not None else [b // 2 for b in source_bytes]
    fit = _what_would_fit(source_bytes, elements, largest_tensor_elements, device, model_bytes, free, host_available)
    return LivePlan(False, device, plan.bytes_needed, free, f"{plan.reason}. {fit}")


def _scratch(largest_tensor_elements: int, inputs: int) -> int:
    return largest_tensor_elements * 4 * (inputs + 3)


def _place(source_bytes: Sequence[int], largest: int, device: str, model_bytes: int, free: int,
           host_available: int | None) -> LivePlan:
    """Where each source goes (no suggestions): all in memory on the CPU; on a GPU as many on the device as fit,
    the rest streamed from pinned host memory."""
    fixed = _scratch(largest, len(source_bytes)) + model_bytes
    needed = int(sum(source_bytes) + fixed)
    if not device.startswith("cuda"):
        budget = int(free * MEMORY_SHARE)
        held = f"the sources need {needed / _GB:.2f} GB on {device} ({_held(source_bytes, fixed)})"
        if needed <= budget:
            return LivePlan(True, device, needed, free, f"{held}, within {MEMORY_SHARE:.0%} of its "
                            f"{free / _GB:.1f} GB free", on_device=len(source_bytes))
        return LivePlan(False, device, needed, free, f"{held}, more than {MEMORY_SHARE:.0%} of its "
                        f"{free / _GB:.1f} GB free")
    usable = free - max(DEVICE_RESERVE_BYTES, free // 10)
    resident, used = 0, fixed
    while resident < len(source_bytes) and used + source_bytes[resident] <= usable:
        used += source_bytes[resident]
        resident += 1
    host = int(sum(source_bytes[resident:]))
    host_free = available_bytes("cpu") if host_available is None and host else host_available
    host_budget = int((host_free or 0) * MEMORY_SHARE)
    where = (f"{_count(resident)} on {device} ({used / _GB:.1f} GB with the chat model and scratch, of "
             f"{max(usable, 0) / _GB:.1f} GB usable: {free / _GB:.1f} GB free less room for activations)")
    if fixed > usable:
        return LivePlan(False, device, needed, free, f"the chat model and scratch alone need {fixed / _GB:.1f} GB "
                        f"on {device}, more than its {max(usable, 0) / _GB:.1f} GB usable")
    if host > host_budget:
        return LivePlan(False, device, needed, free, f"{where}; the other {_count(len(source_bytes) - resident, False)} "
                        f"({host / _GB:.1f} GB) would not fit in {MEMORY_SHARE:.0%} of the host's "
                        f"{(host_free or 0) / _GB:.1f} GB free")
    streamed = len(source_bytes) - resident
    rest = (f"; {_count(streamed, False)} ({host / _GB:.1f} GB) in pinned host memory, streamed to the GPU tensor "
            "by tensor (each merge also moves those bytes)" if streamed else "")
    return LivePlan(True, device, needed, free, f"live merging holds {where}{rest}", on_device=resident,
                    streamed=streamed, host_bytes=host)


def _held(source_bytes: Sequence[int], fixed: int) -> str:
    return f"{_count(len(source_bytes))} {sum(source_bytes) / _GB:.1f} GB, the chat model and scratch {fixed / _GB:.1f} GB"


def _count(sources: int, from_base: bool = True) -> str:
    """'the base and 2 experts' (sources counted from the base) or '1 expert'."""
    if not from_base:
        return f"{sources} expert{'s' if sources != 1 else ''}"
    if sources == 0:
        return "no source"
    experts = sources - 1
    return "the base" + (f" and {experts} expert{'s' if experts != 1 else ''}" if experts else "")


def _what_would_fit(source_bytes: Sequence[int], elements: Sequence[int], largest: int, device: str,
                    model_bytes: int, free: int, host_available: int | None) -> str:
    """Where the sources do not fit live: how many experts would, whether 8-bit sources would, and the folder
    merge, which always does (it streams a few tensors at a time)."""
    def fits(sizes: Sequence[int]) -> bool:
        return _place(sizes, largest, device, model_bytes, free, host_available).live

    fewer = next((n for n in range(len(source_bytes) - 1, 0, -1) if fits(source_bytes[:n])), 0)
    options = [f"with the base and {fewer - 1} expert{'s' if fewer != 2 else ''} live merging would fit"
               if fewer > 1 else "even fewer experts would not fit"]
    eight_bit = list(elements)  # one byte per element
    options.append(f"8-bit copies of the sources ({sum(eight_bit) / _GB:.1f} GB, not exact; MergeLab keeps sources "
                   f"exact) would {'fit' if fits(eight_bit) else 'not fit either'}")
    options.append("or merge to a folder, which works at any size (streamed, a few tensors at a time)")
    return "What would fit: " + "; ".join(options)


def plan_for_states(states: Sequence[Mapping[str, torch.Tensor]], *, device: str, available: int | None = None,
                    host_available: int | None = None, model_dtype: torch.dtype | None = None) -> LivePlan:
    """The memory plan for sources given as state dicts (meta tensors are enough: only shapes and dtypes are read),
    the first one the base; the chat model is the base's shape in `model_dtype` (default: the base's own dtypes)."""
    sizes = [sum(t.numel() * t.element_size() for t in state.values()) for state in states]
    largest = max((t.numel() for state in states for t in state.values()), default=0)
    base = states[0].values() if states else []
    model = sum(t.numel() * (torch.tensor([], dtype=model_dtype).element_size() if model_dtype else t.element_size())
                for t in base)
    return live_memory_plan(sizes, largest, device=device, model_bytes=model, available=available,
                            host_available=host_available,
                            source_elements=[sum(t.numel() for t in state.values()) for state in states])


# --- the merger -------------------------------------------------------------------------------------------------

def _promoted(dtypes: Iterable[torch.dtype]) -> torch.dtype:
    """The inputs' dtypes promoted (bf16 with bf16: bf16; bf16 with float32: float32)."""
    result = None
    for dtype in dtypes:
        result = dtype if result is None else torch.promote_types(result, dtype)
    return result or torch.float32


class ReaderTensors(Mapping):
    """A model reader (merging.sources.open_model) as a read-only mapping name → tensor, read on access: handed to
    LiveMerger, each tensor is read once, straight into where the merger keeps it (no whole-model copy first).
    Shapes and dtypes come from the header (`shape_of`, `dtype_of`) without reading data."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self._names = list(reader.tensor_names())

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._names:
            raise KeyError(name)
        return self.reader.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def shape_of(self, name: str) -> tuple[int, ...]:
        return tuple(self.reader.shape(name))

    def dtype_of(self, name: str) -> torch.dtype:
        return self.reader.dtype(name)


def _shape(state: Mapping[str, torch.Tensor], name: str) -> tuple[int, ...]:
    return state.shape_of(name) if isinstance(state, ReaderTensors) else tuple(state[name].shape)


def _floating(state: Mapping[str, torch.Tensor], name: str) -> bool:
    dtype = state.dtype_of(name) if isinstance(state, ReaderTensors) else state[name].dtype
    return dtype.is_floating_point


def _kept(tensor: torch.Tensor, device: str, streamed: bool) -> torch.Tensor:
    """Where a source tensor is held: on `device`, or (streamed) in host memory, pinned when `device` is a GPU so
    the per-tensor copies run at full speed. A tensor already there is kept as is (no second copy)."""
    if not streamed:
        return tensor.to(device).contiguous()
    tensor = tensor.to("cpu").contiguous()
    return tensor.pin_memory() if torch.device(device).type == "cuda" and not tensor.is_pinned() else tensor


class LiveMerger:
    """Keeps the base's and `models`' shared tensors (their own dtype), each once; `merge(recipe, seed)` returns a
    merged state dict and `merge_into(targets, recipe, seed)` writes it into existing tensors. The recipe's `model`
    strings are keys of `models`; the base's key is `recipe.base_model`.

    `on_device`: how many sources (the base first, then `models` in order) are held on `device`; the others are
    held in (pinned) host memory and moved to `device` per tensor while merging. None: all on `device`."""

    def __init__(self, base: Mapping[str, torch.Tensor], models: Mapping[str, Mapping[str, torch.Tensor]],
                 num_layers: int, names: Iterable[str] | None = None, *, device: str = "cpu",
                 threads: int | None = None, on_device: int | None = None) -> None:
        self.num_layers = num_layers
        self.device = device
        self.threads = threads or spare_cores()
        wanted = list(names) if names is not None else list(base)
        self.names: list[str] = [
            n for n in wanted
            if n in base and _floating(base, n)
            and all(n in m and _shape(m, n) == _shape(base, n) for m in models.values())
        ]
        everything = set(base).union(*(set(m) for m in models.values()))
        self.unmerged_names: list[str] = sorted(everything - set(self.names))
        resident = len(models) + 1 if on_device is None else on_device
        # The sources' own tensors, as the engine reads them (no widening: the methods widen per tensor).
        self.base: dict[str, torch.Tensor] = {n: _kept(base[n], device, resident < 1) for n in self.names}
        self.models: dict[str, dict[str, torch.Tensor]] = {
            key: {n: _kept(m[n], device, index + 2 > resident) for n in self.names}
            for index, (key, m) in enumerate(models.items())
        }
        self.streamed: set[str] = {key for index, key in enumerate(models) if index + 2 > resident}
        self.base_streamed = resident < 1
        self.notes: list[str] = []  # the last merge's per-tensor notes ("name: message")
        self._dtypes = {t.dtype for state in [self.base, *self.models.values()] for t in state.values()}
        # Magnitude thresholds of the kept tensors per density (a weight slider move reuses them: ties 3x faster).
        self._thresholds: dict = {}

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors kept (base and models, on the device and in host memory)."""
        kept = [self.base, *self.models.values()]
        return sum(t.numel() * t.element_size() for state in kept for t in state.values())

    def source_dtype(self) -> torch.dtype:
        """The engine's output dtype when a recipe sets none: the kept tensors' dtypes promoted (bf16 in → bf16
        out). Per tensor, `tensors()` promotes only the inputs that tensor's merge reads, as the engine does."""
        return _promoted(self._dtypes)

    def output_dtype(self, recipe: Recipe) -> torch.dtype:
        """What the engine writes for this recipe (all sources of one dtype): out_dtype, else dtype, else theirs."""
        chosen = recipe.out_dtype or recipe.dtype
        return DTYPES[chosen] if chosen in DTYPES else self.source_dtype()

    def _loaded(self, inputs: list[str], recipe: Recipe) -> list[str]:
        """The merge inputs, each one this merger holds (RecipeError naming any it does not)."""
        known = set(self.models) | ({recipe.base_model} if recipe.base_model else set())
        missing = [m for m in inputs if m not in known]
        if missing:
            raise RecipeError(f"the recipe names model(s) {', '.join(map(repr, missing))} that are not loaded here; "
                              f"use one of {', '.join(map(repr, self.models))}")
        return inputs

    def _source(self, key: str, base_key: str | None) -> tuple[dict[str, torch.Tensor], bool]:
        """(a source's kept tensors, whether they are streamed) by its recipe key."""
        if key not in self.models and key == base_key:
            return self.base, self.base_streamed
        return self.models[key], key in self.streamed

    def tensors(self, recipe: Recipe, seed: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, merged tensor in the engine's output dtype) one tensor at a time; `notes` is set at the end."""
        return self._merged(recipe, seed, None)

    def _merged(self, recipe: Recipe, seed: int, into: Mapping[str, torch.Tensor] | None
                ) -> Iterator[tuple[str, torch.Tensor]]:
        """tensors(); with `into`, a float32 result may be written straight into `into[name]` (then the tensor
        yielded shares its storage) where the output dtype is float32 too."""
        # validates the recipe and resolves every tensor's parameters, once
        step = MergeStep(recipe, self.num_layers, seed=seed, device=self.device, names=self.names)
        sources = [self._source(key, recipe.base_model) for key in self._loaded(step.inputs, recipe)]
        base_in = [(self.base, self.base_streamed)] if step.uses_base else []
        fixed = DTYPES.get(recipe.out_dtype or recipe.dtype or "")
        inputs = _Inputs(DTYPES.get(recipe.dtype or ""), self.device)
        if len(self._thresholds) > 64 * max(1, len(self.names)):
            self._thresholds.clear()
        # Thresholds are remembered by the tensors' storage: only for the kept tensors themselves, never for copies
        # (a freed copy's address can come back holding other values): not when a dtype is rounded or streamed.
        copies = any(streamed for _, streamed in base_in + sources)
        memo = self._thresholds if not copies and all(inputs.kept_as_is(d) for d in self._dtypes) else None
        with compute_threads(self.threads):
            for name in self.names:
                read = [src[name] for src, _ in base_in + sources]
                out_dtype = fixed or _promoted(t.dtype for t in read)  # per tensor, as the engine plans it
                prepared = [inputs.prepared(t) for t in read]
                target = into.get(name) if into is not None and out_dtype == torch.float32 else None
                with reusing(thresholds=memo, into=target):
                    result = step(name, prepared[0] if base_in else None, prepared[len(base_in):], out_dtype)
                yield name, result if result.dtype == out_dtype else result.to(out_dtype)
        self.notes = step.note_lines()

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
        # One target: a fused float32 merge writes straight into its parameter (no copy; merging.methods.fused).
        for name, tensor in self._merged(recipe, seed, many[0] if len(many) == 1 else None):
            for target in many:
                found = target.get(name)
                if found is not None and found.shape == tensor.shape:
                    if found.data_ptr() != tensor.data_ptr():
                        found.copy_(tensor)
                    written += 1
        return written


class _Inputs:
    """How a kept source tensor reaches the method: moved to the device when it is streamed, rounded to the
    recipe's `dtype` when the engine would round it (widening bf16/fp16 to float32 is exact and the methods widen
    per chunk themselves, so that one is skipped: faster, less memory)."""

    def __init__(self, compute: torch.dtype | None, device: str) -> None:
        self.compute = compute
        self.device = torch.device(device)

    def kept_as_is(self, dtype: torch.dtype) -> bool:
        exact = self.compute == torch.float32 and dtype in (torch.bfloat16, torch.float16)
        return self.compute is None or dtype == self.compute or exact

    def prepared(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device != self.device:
            tensor = tensor.to(self.device, non_blocking=True)
        return tensor if self.kept_as_is(tensor.dtype) else tensor.to(self.compute)
