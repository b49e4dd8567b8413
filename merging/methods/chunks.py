"""Run an elementwise step over a big flat tensor in cache-sized chunks, split across two threads.

Every step of a merge that combines several models elementwise (sign election, disjoint mean, normalisation) reads
and writes each element a dozen times; done chunk by chunk those passes stay in the CPU cache, and chunk-sized
scratch buffers replace full-size temporaries (allocating 64 MB costs more than computing on it). Chunks are at most
torch's parallel grain size, so each op runs on one thread and our two workers share the cores without contention.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

CHUNK = 1 << 15  # elements; torch runs ops this small on one thread
_MIN_PARALLEL = 1 << 18  # below this many elements one thread is quicker than handing work over
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="merge-chunks")
        return _pool


def for_each_chunk(numel: int, step: Callable[[int, int, dict], None]) -> list[dict]:
    """Call step(start, stop, scratch) for consecutive chunks covering [0, numel); `scratch` is a dict private to
    one worker (chunk-sized buffers, running sums). Each worker takes a contiguous run of chunks in order; the
    workers' scratch dicts are returned in the order of their runs."""
    bounds = [(start, min(numel, start + CHUNK)) for start in range(0, numel, CHUNK)]

    def run(part: list[tuple[int, int]]) -> dict:
        scratch: dict = {}
        for start, stop in part:
            step(start, stop, scratch)
        return scratch

    if numel < _MIN_PARALLEL or torch.get_num_threads() < 2:
        return [run(bounds)]
    half = (len(bounds) + 1) // 2
    futures = [_executor().submit(run, part) for part in (bounds[:half], bounds[half:])]
    return [future.result() for future in futures]


def buffer(scratch: dict, role: str, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A chunk-sized buffer for `role` (dtype of `like` unless given), reused across chunks, trimmed to the chunk."""
    dtype = dtype or like.dtype
    held = scratch.get(role)
    if held is None or held.dtype != dtype:
        held = scratch[role] = torch.empty(CHUNK, dtype=dtype, device=like.device)
    return held[: like.numel()]
