"""Load a Hugging Face model folder for inference: the right Auto class from its config, its tokenizer, a dtype,
a device and optionally bitsandbytes 8-bit/4-bit quantization. Never runs remote code, never reaches the Hub."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from inference.errors import InferenceError, SourceError
from merging.dtypes import lookup_dtype

ModelKind = Literal["lm", "classifier"]
Quantization = Literal["8bit", "4bit"]



@dataclass
class LoadedModel:
    """A model ready for inference. `kind` is "lm" (causal LM, generates text) or "classifier"
    (*ForSequenceClassification, predicts a label through its own head)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    kind: ModelKind
    path: Path | None = None


def model_kind(config: dict) -> ModelKind:
    """"classifier" when the config's architecture is a *ForSequenceClassification, else "lm"."""
    architectures = config.get("architectures") or []
    return "classifier" if any(a.endswith("ForSequenceClassification") for a in architectures) else "lm"


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype | str:
    """None means float32 on the CPU (exact, and bf16 matmuls are slow there) and the checkpoint's own dtype
    ("auto") on an accelerator."""
    if dtype is None:
        return torch.float32 if str(device).startswith("cpu") else "auto"
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    resolved = lookup_dtype(str(dtype))
    if resolved is None:
        raise InferenceError(f"Unknown dtype {dtype!r}: use one of auto, float32, float16, bfloat16.")
    return resolved


def _read_config(folder: Path) -> dict:
    config_file = folder / "config.json"
    if not folder.is_dir():
        raise SourceError(f"Model folder {str(folder)!r} does not exist: give the path of a folder with config.json.")
    if not config_file.is_file():
        raise SourceError(f"{str(folder)!r} has no config.json: give a Hugging Face model folder.")
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SourceError(f"{config_file} is not valid JSON ({error}): re-export the model.") from None


def quantization_config(quantization: Quantization | None, compute_dtype: torch.dtype):
    """A BitsAndBytesConfig for "8bit"/"4bit" (None for no quantization); a clear error where bitsandbytes is
    missing."""
    if quantization is None:
        return None
    _check_quantization_name(quantization)
    try:
        import bitsandbytes  # deferred: optional (GPU hosts); imported only to fail early, readably  # noqa: F401
        from transformers import BitsAndBytesConfig  # deferred: with bitsandbytes, only when 8/4-bit is asked for
    except Exception as error:  # noqa: BLE001  (ImportError, or a broken native library)
        raise InferenceError(
            f"{quantization} loading needs the bitsandbytes package, which cannot be used here ({error}). "
            "Install bitsandbytes, or load the model without quantization."
        ) from None
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_type="nf4")


def _check_quantization_name(quantization: str) -> None:
    if quantization not in ("8bit", "4bit"):
        raise InferenceError(f"Unknown quantization {quantization!r}: use '8bit', '4bit' or none.")


def require_gpu_for_quantization(quantization: Quantization | None, device: str) -> None:
    """4-bit and 8-bit (bitsandbytes) belong to GPU hosts: refuse them on a CPU device or a host without CUDA.
    bitsandbytes' CPU path depends on the CPU and on optional kernel packages (it fails outright on some CPUs),
    so it is not offered rather than offered unreliably."""
    if quantization is None:
        return
    _check_quantization_name(quantization)
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        where = "this host has no CUDA GPU" if not torch.cuda.is_available() else f"the device is {device!r}"
        raise InferenceError(
            f"{quantization} loading (bitsandbytes) needs a GPU host with CUDA, and {where}: load the model without "
            "quantization here (float32 or bfloat16), or run on a GPU host with device='cuda'."
        )


def load_model(
    path: str | Path,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    quantization: Quantization | None = None,
) -> LoadedModel:
    """Load the model folder `path` in eval mode with its tokenizer (left padding, a pad token). `quantization`
    ("8bit" | "4bit", bitsandbytes) needs device="cuda" on a CUDA host; elsewhere it is an InferenceError."""
    folder = Path(path)
    config = _read_config(folder)
    kind = model_kind(config)
    torch_dtype = resolve_dtype(dtype, device)
    require_gpu_for_quantization(quantization, device)
    compute_dtype = torch_dtype if isinstance(torch_dtype, torch.dtype) else torch.float16
    quant = quantization_config(quantization, compute_dtype)
    auto_class = AutoModelForSequenceClassification if kind == "classifier" else AutoModelForCausalLM
    kwargs: dict = {"dtype": torch_dtype, "trust_remote_code": False, "local_files_only": True}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device}
    try:
        model = auto_class.from_pretrained(folder, **kwargs)
    except (ImportError, OSError, RuntimeError, ValueError) as error:
        if quant is not None:
            raise InferenceError(
                f"Could not load {folder.name!r} in {quantization} on {device!r}: {error}. bitsandbytes needs a "
                "supported GPU for most setups; load without quantization on this host."
            ) from None
        raise InferenceError(f"Could not load the model in {str(folder)!r}: {error}") from None
    if quant is None:
        model = model.to(device)
    model.eval()
    tokenizer = load_tokenizer(folder)
    if kind == "classifier":
        tokenizer.padding_side = "right"  # encoders with absolute positions are trained on right padding
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model=model, tokenizer=tokenizer, kind=kind, path=folder)


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerBase:
    """The folder's tokenizer set up for batched generation: left padding, and eos as pad when it has no pad."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False, local_files_only=True)
    except Exception as error:  # noqa: BLE001 - tokenizers raises bare Exception for a malformed tokenizer.json
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(" :")[:160]
        raise SourceError(f"{str(folder)!r} has no usable tokenizer ({reason}): copy the tokenizer files of the model "
                          "it was fine-tuned from into it.") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (what it costs to keep it in memory)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
