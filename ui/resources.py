"""What sessions share: one memory-bounded, least-recently-used cache of read-only models (sources and merged
folders), plus where to run them. Anything a session changes (merged weights) lives in the session, never here."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from inference import LoadedModel, ModelCache, load_tokenizer
from ui.hosting import running_on_space

DEFAULT_CACHE_BYTES = int(float(os.environ.get("MERGELAB_CACHE_GB", "4")) * 2**30)
_CACHE = ModelCache(DEFAULT_CACHE_BYTES)


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def shared_model(path: Path, quantization: str | None = None) -> LoadedModel:
    """A read-only model from the shared cache. Callers must not change its weights."""
    return _CACHE.load(path, device=device(), quantization=quantization)


def private_copy(path: Path) -> LoadedModel:
    """A model this session may overwrite (live-merged weights): a copy of the cached one, with its own tokenizer
    (a fast tokenizer is not safe to use from two threads at once)."""
    shared = shared_model(path)
    return LoadedModel(model=copy.deepcopy(shared.model), tokenizer=load_tokenizer(path), kind=shared.kind, path=path)


def session_tokenizer(session, path: Path):
    """This session's own tokenizer for a folder (shared models, private tokenizers: see private_copy)."""
    key = str(path)
    if key not in session.tokenizers:
        session.tokenizers[key] = load_tokenizer(path)
    return session.tokenizers[key]


def on_gpu(fn):
    """Wrap a GPU function for ZeroGPU on a Hugging Face Space; elsewhere return it unchanged."""
    if not running_on_space():
        return fn
    import spaces  # deferred: only on a Space (pinned in requirements.txt); it hooks into torch/CUDA when imported

    return spaces.GPU(fn)
