"""Inference: load a model folder (dtype, device, bitsandbytes), a bounded LRU cache of loaded models, batched greedy
generation for scoring, streamed chat, batched classification."""

from inference.cache import ModelCache
from inference.errors import InferenceError
from inference.generation import (
    classify_batch,
    classify_logits,
    flatten_content,
    format_prompt,
    generate_batch,
    normalize_messages,
    stream_chat,
)
from inference.loading import LoadedModel, load_model, load_tokenizer, model_kind, parameter_bytes

__all__ = [
    "InferenceError", "LoadedModel", "ModelCache", "classify_batch", "classify_logits", "flatten_content",
    "format_prompt", "generate_batch", "load_model", "load_tokenizer", "model_kind", "normalize_messages",
    "parameter_bytes", "stream_chat",
]
