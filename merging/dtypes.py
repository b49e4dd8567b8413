"""The dtypes MergeLab reads and writes, by name: one table for recipes, plans, the engine and inference."""

from __future__ import annotations

from typing import Any

import torch

from merging.errors import MergeLabError

# The names recipes and config.json use, in the order messages list them.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
}
# Other spellings accepted where a dtype is typed (command lines, mergekit habits).
ALIASES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float": torch.float32, "fp16": torch.float16, "half": torch.float16, "bf16": torch.bfloat16,
}
# The dtype codes of safetensors headers (read by merging.sources, written by merging.shards).
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
TORCH_TO_SAFETENSORS: dict[torch.dtype, str] = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}


def lookup_dtype(name: str) -> torch.dtype | None:
    """A dtype name or alias ("bf16", "torch.bfloat16", any case) as a torch.dtype; None where unknown."""
    key = str(name).lower().removeprefix("torch.")
    return DTYPES.get(key) or ALIASES.get(key)


def torch_dtype(value: Any) -> torch.dtype | None:
    """A recipe's dtype string (or a torch.dtype, or None) as a torch.dtype; MergeLabError for an unknown name."""
    if value is None or isinstance(value, torch.dtype):
        return value
    dtype = lookup_dtype(value)
    if dtype is None:
        raise MergeLabError(f"Unknown dtype {value!r}: use float32, float16 or bfloat16.")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> "bfloat16" (as config.json writes it)."""
    return str(dtype).removeprefix("torch.")
