"""Hugging Face model adapters: turn a base folder, expert folders and unlabeled inputs per task into what the
trainer needs (task vectors, the student's parameters, and a student-logits function per task and batch), with the
teachers' soft targets computed once.

- Causal LMs: each teacher continues its own task's prompts greedily (chat template as in inference); the scored rows
  are the next-token distributions at the positions of that continuation (teacher-forced, so teacher and student see
  the same text). One student model holds θ(λ).
- Classifiers with per-task heads: one backbone (θ(λ)) shared by T modules, module t carrying expert t's own head;
  the heads are never merged.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file

from merging.errors import MergeLabError, SourceError
from merging.learned.coefficients import TaskVectors, shared_tensor_names
from merging.learned.objectives import TeacherTargets, teacher_targets

Kind = Literal["lm", "classifier"]


Split = Literal["train", "heldout"]


@dataclass
class LearningSetup:
    """Everything the trainer needs, model-agnostic from here on. Batches come in two splits: "train" (what learning
    sees) and "heldout" (inputs kept aside for early stopping; never in a training batch)."""

    tasks: list[str]
    vectors: TaskVectors
    params: dict[str, torch.Tensor]  # the student's leaf tensors for vectors.names
    student_logits: Callable[..., torch.Tensor]  # (task, batch, split="train") -> (rows, classes) logits at θ(params)
    num_batches: int  # the most training batches any task has; a task with fewer cycles through its own
    teachers: list[list[TeacherTargets]] = field(default_factory=list)  # [task][batch]; empty when not needed
    num_heldout_batches: int = 0  # the most held-out batches any task has (0: no held-out inputs)
    heldout_teachers: list[list[TeacherTargets]] = field(default_factory=list)

    def teacher(self, task: int, batch: int, split: Split = "train") -> TeacherTargets:
        own = (self.teachers if split == "train" else self.heldout_teachers)[task]
        return own[batch % len(own)]


def model_kind(folder: str | Path) -> Kind:
    """"lm" for *ForCausalLM checkpoints, "classifier" for *ForSequenceClassification ones."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        raise SourceError(f"{folder} has no config.json: point at a Hugging Face model folder")
    archs = json.loads(config.read_text()).get("architectures") or []
    if any(a.endswith("ForCausalLM") for a in archs):
        return "lm"
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "classifier"
    raise MergeLabError(
        f"{folder} is a {archs or 'model without architectures'}: learned merging supports *ForCausalLM experts and "
        "*ForSequenceClassification experts with per-task heads"
    )


def read_state(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder's safetensors shards (memory-mapped)."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise SourceError(f"{folder} holds no .safetensors files: learned merging reads safetensors checkpoints only")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return {_modern_name(n): t for n, t in state.items()}


def _modern_name(name: str) -> str:
    """Old BERT checkpoints (bert-base-uncased itself) name LayerNorm parameters gamma/beta; transformers loads
    them as weight/bias, which is what fine-tunes saved since carry."""
    if name.endswith("LayerNorm.gamma"):
        return name.replace("LayerNorm.gamma", "LayerNorm.weight")
    if name.endswith("LayerNorm.beta"):
        return name.replace("LayerNorm.beta", "LayerNorm.bias")
    return name


def _load(folder: str | Path, kind: Kind, device: torch.device) -> torch.nn.Module:
    # deferred: transformers takes seconds to import; only loading a model needs it (not `import merging.learned`)
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForCausalLM if kind == "lm" else AutoModelForSequenceClassification
    try:
        model = cls.from_pretrained(str(folder), dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise SourceError(f"cannot load {folder} as a {kind} model: {e}") from e
    return model.to(device).eval()


def _load_tokenizer(folder: str | Path):
    from transformers import AutoTokenizer  # deferred: heavy, as in _load

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise SourceError(f"cannot load a tokenizer from {folder}: {e}") from e


def _chunks(items: Sequence, size: int) -> list[Sequence]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu() for n, p in model.named_parameters()}


def _check_inputs(inputs: Mapping[str, Sequence[str]], experts: Mapping[str, Path]) -> None:
    missing = [t for t in experts if not inputs.get(t)]
    if missing:
        raise MergeLabError(f"no unlabeled examples for expert(s) {missing}: the prompts file needs lines whose "
                            "`expert` names each of them")


# ---- causal language models ----

def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return tokenizer(prompt, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def _greedy_continuations(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, device) -> list[list[int]]:
    """Each prompt's greedy continuation, up to and including the end-of-sequence token."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    continuations = []
    for row in out[:, width:].tolist():
        if tokenizer.eos_token_id in row:
            row = row[:row.index(tokenizer.eos_token_id) + 1]
        continuations.append(row)
    return continuations


def _lm_batch(prompts: list[list[int]], continuations: list[list[int]], pad: int, device) -> dict[str, torch.Tensor]:
    """Right-padded prompt+continuation rows and the mask of positions whose next token is a continuation token."""
    seqs = [p + c for p, c in zip(prompts, continuations)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    scored = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (p, c) in enumerate(zip(prompts, continuations)):
        ids[i, :len(p) + len(c)] = torch.tensor(p + c)
        attention[i, :len(p) + len(c)] = 1
        scored[i, len(p) - 1:len(p) + len(c) - 1] = True
    return {"input_ids": ids.to(device), "attention_mask": attention.to(device), "scored": scored.to(device)}


def _lm_logits(model, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return logits[batch["scored"]]


def setup_causal_lm(
    base: str | Path,
    experts: Mapping[str, str | Path],
    prompts: Mapping[str, Sequence[str]],
    *,
    batch_size: int = 16,
    device: str = "cpu",
    need_teachers: bool = True,
    temperature: float = 2.0,
    top_k: int = 64,
    max_new_tokens: int = 32,
    heldout: Mapping[str, Sequence[str]] | None = None,
) -> LearningSetup:
    """Learning setup for causal LMs; `prompts[task]` are task t's unlabeled prompts (task names = expert names),
    `heldout[task]` prompts kept aside for early stopping (never in a training batch)."""
    dev = torch.device(device)
    _check_inputs(prompts, experts)
    tokenizer = _load_tokenizer(base)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tasks = list(experts)
    splits = {"train": prompts, "heldout": heldout or {}}
    batches: dict[str, list[list[dict]]] = {split: [] for split in splits}
    teachers: dict[str, list[list[TeacherTargets]]] = {split: [] for split in splits}
    expert_states = []
    for task in tasks:
        teacher = _load(experts[task], "lm", dev)
        for split, inputs in splits.items():
            task_batches, task_targets = [], []
            for chunk in _chunks([_prompt_ids(tokenizer, p) for p in inputs.get(task, ())], batch_size):
                continuation = _greedy_continuations(teacher, tokenizer, list(chunk), max_new_tokens, dev)
                batch = _lm_batch(list(chunk), continuation, pad, dev)
                task_batches.append(batch)
                if need_teachers:
                    with torch.no_grad():
                        task_targets.append(teacher_targets(_lm_logits(teacher, batch), temperature, top_k))
            batches[split].append(task_batches)
            teachers[split].append(task_targets)
        expert_states.append(_parameters(teacher))
        del teacher
        gc.collect()

    student = _load(base, "lm", dev)
    params = dict(student.named_parameters())
    base_state = _parameters(student)
    names = [n for n in shared_tensor_names(base_state, expert_states) if n in params]
    vectors = TaskVectors(base_state, expert_states, names, device=dev)
    del expert_states, base_state
    for n, p in params.items():
        p.requires_grad_(n in names)

    def student_logits(task: int, batch: int, split: Split = "train") -> torch.Tensor:
        own = batches[split][task]
        return _lm_logits(student, own[batch % len(own)])

    return _setup(tasks, vectors, {n: params[n] for n in names}, student_logits, batches, teachers, need_teachers)


def _setup(tasks, vectors, params, student_logits, batches, teachers, need_teachers) -> LearningSetup:
    """A LearningSetup from per-split batches; held-out batches only when every task has some."""
    heldout = batches["heldout"]
    num_heldout = max(map(len, heldout)) if heldout and all(heldout) else 0
    return LearningSetup(tasks, vectors, params, student_logits, max(map(len, batches["train"])),
                         teachers["train"] if need_teachers else [], num_heldout,
                         teachers["heldout"] if need_teachers and num_heldout else [])


# ---- classifiers with per-task heads ----

def _encode(tokenizer, items: list, max_length: int):
    """Texts, or (first, second) pairs (GLUE's sentence-pair tasks) encoded as the tokenizer's text pairs."""
    if items and all(isinstance(i, (tuple, list)) and len(i) == 2 for i in items):
        first, second = [str(i[0]) for i in items], [str(i[1]) for i in items]
        return tokenizer(first, second, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return tokenizer([str(i) for i in items], padding=True, truncation=True, max_length=max_length,
                     return_tensors="pt")


def setup_classifier(
    base: str | Path,
    experts: Mapping[str, str | Path],
    texts: Mapping[str, Sequence[str]],
    *,
    batch_size: int = 16,
    device: str = "cpu",
    need_teachers: bool = True,
    temperature: float = 2.0,
    max_length: int = 128,
    heldout: Mapping[str, Sequence[str]] | None = None,
) -> LearningSetup:
    """Learning setup for sequence classifiers: task t is read through expert t's head on a merged backbone;
    `heldout[task]` texts are kept aside for early stopping (never in a training batch)."""
    dev = torch.device(device)
    _check_inputs(texts, experts)
    tasks = list(experts)
    models = [_load(experts[t], "classifier", dev) for t in tasks]
    splits = {"train": texts, "heldout": heldout or {}}
    batches: dict[str, list[list[dict]]] = {split: [] for split in splits}
    teachers: dict[str, list[list[TeacherTargets]]] = {split: [] for split in splits}
    for task, model in zip(tasks, models):
        tokenizer = _load_tokenizer(experts[task])
        for split, inputs in splits.items():
            task_batches = []
            for chunk in _chunks(list(inputs.get(task, ())), batch_size):
                enc = _encode(tokenizer, list(chunk), max_length)
                task_batches.append({k: v.to(dev) for k, v in enc.items()})
            batches[split].append(task_batches)
            if need_teachers:
                with torch.no_grad():
                    teachers[split].append([teacher_targets(model(**b).logits, temperature) for b in task_batches])

    base_state = read_state(base)
    expert_states = [_parameters(m) for m in models]
    names = shared_tensor_names(base_state, expert_states)
    vectors = TaskVectors(base_state, expert_states, names, device=dev)
    del expert_states, base_state
    # One backbone: modules 1..T-1 take module 0's parameter objects, keeping only their own heads.
    shared = {n: p for n, p in models[0].named_parameters() if n in names}
    for model in models[1:]:
        for n in names:
            owner, _, leaf = n.rpartition(".")
            setattr(model.get_submodule(owner), leaf, shared[n])
    gc.collect()
    for model in models:
        for n, p in model.named_parameters():
            p.requires_grad_(n in shared)

    def student_logits(task: int, batch: int, split: Split = "train") -> torch.Tensor:
        own = batches[split][task]
        return models[task](**own[batch % len(own)]).logits

    return _setup(tasks, vectors, shared, student_logits, batches, teachers, need_teachers)
