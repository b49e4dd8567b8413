"""Run an elementwise step over a big flat tensor in cache-sized chunks, split across the compute threads.

Every step of a merge that combines several models elementwise (sign election, disjoint mean, normalisation) reads
and writes each element a dozen times; done chunk by chunk those passes stay in the CPU cache, and chunk-sized
scratch buffers replace full-size temporaries (allocating 64 MB costs more than computing on it). Chunks are at most
torch's parallel grain size, so each op runs on one thread and our workers share the cores without contention.

Thread policy: by default the chunk workers follow torch.get_num_threads() (at most 2). A caller that runs its own
threads beside the merge (the streaming engine: a reader and a writer thread) sets one budget for both torch's
intra-op pool and these workers with `compute_threads(n)`, so the merge does not oversubscribe the cores: on a 2-core
CPU two chunk workers plus torch's OpenMP threads plus the engine's threads, all passing the GIL around for 32K-element
ops, ran slower than one compute thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

CHUNK = 1 << 15  # elements; torch runs ops this small on one thread
SOLO_CHUNK = 1 << 17  # elements per chunk when one thread does all: a quarter of the Python and dispatch overhead
_MIN_PARALLEL = 1 << 18  # below this many elements one thread is quicker than handing work over
_MAX_WORKERS = 2  # more workers gain little: elementwise steps are bound by memory bandwidth and the GIL
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_budget: int | None = None  # set by compute_threads(); None: follow torch.get_num_threads()


class _Reused(threading.local):
    buffers: dict | None = None  # role -> flat tensor, while compute_threads() is active in this thread


_reused = _Reused()


def full_buffer(role: str, shape: torch.Size | tuple, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A full-size scratch tensor for one method call (never returned to the caller). Inside compute_threads() it
    is kept for the next call with the same role in this thread and grown as needed: faulting in a fresh 100 MB
    tensor per call costs more than computing on it. Elsewhere a fresh one."""
    numel = torch.Size(shape).numel()
    held = _reused.buffers
    if held is None or torch.device(device).type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    flat = held.get(role)
    if flat is None or flat.dtype != dtype or flat.numel() < numel:
        held.pop(role, None)  # free the smaller one first
        flat = held[role] = torch.empty(numel, dtype=dtype, device=device)
    return flat[:numel].view(shape)


def spare_cores() -> int:
    """The cores this process may run on, less one for the engine's reader and writer (or the page's server): on a
    busy 2-core machine two compute threads were 10x slower than one on a 1536 × 576 ties merge."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def workers() -> int:
    """How many threads for_each_chunk splits a big step across (1: the calling thread alone)."""
    threads = _budget if _budget is not None else torch.get_num_threads()
    return max(1, min(_MAX_WORKERS, threads))


@contextmanager
def compute_threads(threads: int) -> Iterator[int]:
    """Within the block, merge compute uses `threads` threads: torch's intra-op pool (process-wide, restored after)
    and the chunk workers; method calls in this thread reuse their full-size scratch tensors (full_buffer). Not reentrant across threads: one merge at a time sets it (the engine)."""
    global _budget
    threads = max(1, int(threads))
    before_torch, before_budget, before_buffers = torch.get_num_threads(), _budget, _reused.buffers
    torch.set_num_threads(threads)
    _budget = threads
    _reused.buffers = {} if before_buffers is None else before_buffers  # full_buffer() reuses within the block
    try:
        yield threads
    finally:
        _reused.buffers = before_buffers
        _budget = before_budget
        torch.set_num_threads(before_torch)


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_MAX_WORKERS, thread_name_prefix="merge-chunks")
        return _pool


def whole_tensor(tensor: torch.Tensor) -> bool:
    """Whether a step over `tensor` runs as one chunk: on a GPU (chunks are a CPU-cache technique; there, 32K-element
    chunks would mean millions of tiny kernel launches for a 7B model)."""
    return tensor.device.type != "cpu"


def for_each_chunk(numel: int, step: Callable[[int, int, dict], None], *, whole: bool = False) -> list[dict]:
    """Call step(start, stop, scratch) for consecutive chunks covering [0, numel); `scratch` is a dict private to
    one worker (chunk-sized buffers, running sums). Each worker takes a contiguous run of chunks in order; the
    workers' scratch dicts are returned in the order of their runs. `whole`: one chunk, in this thread."""
    if whole:
        scratch: dict = {}
        step(0, numel, scratch)
        return [scratch]
    count = workers()
    size = SOLO_CHUNK if count < 2 else CHUNK  # fixed per budget, so two passes of one merge chunk alike
    bounds = [(start, min(numel, start + size)) for start in range(0, numel, size)]

    def run(part: list[tuple[int, int]]) -> dict:
        scratch: dict = {}
        for start, stop in part:
            step(start, stop, scratch)
        return scratch

    if numel < _MIN_PARALLEL or count < 2:
        return [run(bounds)]
    size = -(-len(bounds) // count)
    parts = [bounds[i:i + size] for i in range(0, len(bounds), size)]
    futures = [_executor().submit(run, part) for part in parts[1:]]
    first = run(parts[0])  # the calling thread takes the first run instead of waiting idle
    return [first] + [future.result() for future in futures]


def buffer(scratch: dict, role: str, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A chunk-sized buffer for `role` (dtype of `like` unless given), reused across chunks, trimmed to the chunk."""
    dtype = dtype or like.dtype
    held = scratch.get(role)
    if held is None or held.dtype != dtype or held.numel() < like.numel():
        held = scratch[role] = torch.empty(max(CHUNK, like.numel()), dtype=dtype, device=like.device)
    return held[: like.numel()]
