"""Planning a merge before any tensor is read: what each output tensor will be (name, shape, dtype), how deep the
engine's queues are, and what the merge will cost (memory, disk, time).

Its own step, used by both the pre-flight check (which reports the estimate) and the engine (which follows the
plan), so neither has to import the other for it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from merging.dtypes import dtype_name, torch_dtype
from merging.inputs import MergeInputs, is_vocab_mismatch, task_heads
from merging.shards import PlannedTensor

PREFETCH_TENSORS = 1  # tensors read ahead of the one being merged (the reader holds one more)
WRITE_BEHIND_TENSORS = 1  # merged tensors waiting for the writer (it holds one more)
# Merge throughput (input bytes read per second, reading + merging + writing overlapped), measured with
# bench/bench_engine.py on a contended 2-core CPU (see docs/benchmarks.md); deliberately on the slow side.
CPU_BYTES_PER_S = 150e6
CUDA_BYTES_PER_S = 600e6


# --- tensor plans -------------------------------------------------------------------------------------------------


@dataclass
class TensorPlan:
    planned: PlannedTensor  # output name, shape, dtype
    merge: bool  # False: copied from the donor (non-float tensors such as integer buffers)
    bytes_read: int


def plan_outputs(inputs: MergeInputs) -> list[TensorPlan]:
    """Every output tensor in the donor's order, with its shape and dtype decided before any data is read."""
    recipe = inputs.recipe
    fixed_dtype = torch_dtype(getattr(recipe, "out_dtype", None) or getattr(recipe, "dtype", None))
    refs = inputs.refs_read_per_tensor()
    heads = task_heads(inputs)
    shared = set(heads.shared) if heads is not None else None
    plan = []
    for name in inputs.donor.tensor_names():
        if shared is not None and name not in shared:  # only the base has it (its own head): copied, not merged
            dtype = inputs.donor.dtype(name)
            out_dtype = fixed_dtype if fixed_dtype is not None and dtype.is_floating_point else dtype
            plan.append(TensorPlan(PlannedTensor(name, tuple(inputs.donor.shape(name)), out_dtype), False,
                                   inputs.donor.nbytes(name)))
            continue
        dtypes = [inputs.sources[r].dtype(name) for r in refs]
        floating = all(d.is_floating_point for d in dtypes)
        shape = inputs.donor.shape(name)
        if inputs.resolve_vocab and is_vocab_mismatch(inputs, name):
            shape = inputs.tokenizer_donor.shape(name)
        if not floating:
            out_dtype = inputs.donor.dtype(name)
        elif fixed_dtype is not None:
            out_dtype = fixed_dtype
        else:
            out_dtype = dtypes[0]
            for d in dtypes[1:]:
                out_dtype = torch.promote_types(out_dtype, d)
        read = sum(inputs.sources[r].nbytes(name) for r in refs) if floating else inputs.donor.nbytes(name)
        plan.append(TensorPlan(PlannedTensor(name, tuple(shape), out_dtype), floating, read))
    return plan


def dominant_dtype(plan: list[TensorPlan]) -> torch.dtype:
    """The output dtype holding most bytes among merged tensors (what config.json should announce)."""
    totals: dict[torch.dtype, int] = {}
    for item in plan:
        if item.merge:
            totals[item.planned.dtype] = totals.get(item.planned.dtype, 0) + item.planned.nbytes
    return max(totals, key=totals.__getitem__) if totals else torch.float32


# --- cost estimate ------------------------------------------------------------------------------------------------


@dataclass
class Estimate:
    """What a merge will cost, from headers only (the pre-flight report's facts)."""

    num_tensors: int
    output_dtype: str
    read_bytes: int
    output_bytes: int
    memory_needed_bytes: int
    estimated_seconds: float


def estimate(inputs: MergeInputs, device: str, *, planned: bool = True) -> Estimate:
    """The merge's size, peak memory and duration. `planned=False` (names or shapes differ, so no plan can be
    made): estimated from the donor alone."""
    refs = inputs.refs_read_per_tensor()
    if planned:
        plan = plan_outputs(inputs)
        out_bytes = sum(p.planned.nbytes for p in plan)
        largest_out = max((p.planned.nbytes for p in plan), default=0)
        out_dtype = "/".join(sorted({dtype_name(p.planned.dtype) for p in plan if p.merge}))
        read_bytes = sum(p.bytes_read for p in plan)
        num_tensors = len(plan)
        extra_out, extra_read = _task_folder_bytes(inputs, plan)
        out_bytes, read_bytes = out_bytes + extra_out, read_bytes + extra_read
    else:
        donor = inputs.donor
        out_bytes = donor.total_bytes()
        largest_out = max((donor.nbytes(n) for n in donor.tensor_names()), default=0)
        out_dtype = "/".join(sorted({dtype_name(donor.dtype(n)) for n in donor.tensor_names()}))
        read_bytes = out_bytes * len(refs)
        num_tensors = len(donor.tensor_names())
    largest_numel = max((math.prod(inputs.donor.shape(n)) for n in inputs.donor.tensor_names()), default=0)
    largest_in = max((src.nbytes(n) for src in inputs.sources.values() for n in src.tensor_names()), default=0)
    # In flight at once: input sets queued, being read and being merged; the method's float32 working copies
    # (inputs + deltas + result); merged tensors queued, being written and being produced. An estimate: methods
    # with masks use a little more.
    memory = (largest_in * len(refs) * (PREFETCH_TENSORS + 2) + largest_numel * 4 * (2 * len(refs) + 2)
              + largest_out * (WRITE_BEHIND_TENSORS + 2))
    rate = CUDA_BYTES_PER_S if device.startswith("cuda") else CPU_BYTES_PER_S
    return Estimate(num_tensors=num_tensors, output_dtype=out_dtype, read_bytes=read_bytes, output_bytes=out_bytes,
                    memory_needed_bytes=memory, estimated_seconds=round(read_bytes / rate + 1.0, 1))


def _task_folder_bytes(inputs: MergeInputs, plan: list[TensorPlan]) -> tuple[int, int]:
    """(bytes written, bytes read) for the per-task folders: the merged tensors again plus each task's own."""
    heads = task_heads(inputs)
    if heads is None:
        return 0, 0
    shared = set(heads.shared)
    shared_bytes = sum(p.planned.nbytes for p in plan if p.planned.name in shared)
    total = 0
    for ref, own in heads.own.items():
        total += shared_bytes + sum(inputs.sources[ref].nbytes(n) for n in own)
    return total, total


def available_bytes(device: str = "cpu") -> int | None:
    """Free memory on `device`: CUDA's free bytes, or the kernel's MemAvailable (page size × available pages where
    /proc/meminfo is missing). None when it cannot be told."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return None
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None
