"""The models a recipe names, opened as lazy sources, and the roles each plays in a merge.

Shared by the pre-flight check (which reports problems) and the engine (which merges once the check is clean):
- operands: the models passed to the method as `tensors`: `Recipe.merge_inputs()` (the non-base models, or every
  listed model plus an unlisted base_model when the method ignores the base), in recipe order;
- donor: the model whose config, tensor order and generation config the output takes (the base, else the first model);
- tokenizer donor: the model whose tokenizer files are copied and whose vocabulary size the output takes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from merging.errors import RecipeError
from merging.sources import ModelSource, open_model


@dataclass
class MergeInputs:
    recipe: Any  # merging.recipe.Recipe, validated (the engine and pre-flight open inputs after validation)
    sources: dict[str, ModelSource]  # one per distinct model reference
    base_ref: str | None
    operand_refs: list[str]
    donor_ref: str
    tokenizer_ref: str
    resolve_vocab: bool  # tokenizer_source set: cut/pad vocabulary rows to the tokenizer donor's
    renamed: dict[str, str] = field(default_factory=dict)  # ref -> how its tensor names were aligned (if they were)

    @property
    def base(self) -> ModelSource | None:
        return self.sources[self.base_ref] if self.base_ref else None

    @property
    def donor(self) -> ModelSource:
        return self.sources[self.donor_ref]

    @property
    def tokenizer_donor(self) -> ModelSource:
        return self.sources[self.tokenizer_ref]

    def refs_read_per_tensor(self) -> list[str]:
        """Distinct models read for every tensor (base first when the method uses it)."""
        refs = ([self.base_ref] if self.recipe.uses_base() else []) + self.operand_refs
        if self.resolve_vocab and self.tokenizer_ref not in refs:
            refs.append(self.tokenizer_ref)
        return list(dict.fromkeys(refs))

    def close(self) -> None:
        for source in self.sources.values():
            source.close()

    def __enter__(self) -> MergeInputs:  # noqa: PYI034 (never subclassed)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def operand_refs(recipe: Any) -> list[str]:
    """The models handed to the method as `tensors`: `Recipe.merge_inputs()`, the one definition the engine, the
    live merger, the pre-flight check and mergekit share (for base-ignoring methods an unlisted base_model is the
    last input)."""
    return list(recipe.merge_inputs())


def tokenizer_ref(recipe: Any, donor_ref: str) -> tuple[str, bool]:
    """(model whose tokenizer the output gets, whether vocabulary rows are resolved to it)."""
    source = recipe.tokenizer_source
    block = getattr(recipe, "tokenizer", None)  # mergekit's `tokenizer: {source: ...}` form
    if source is None and isinstance(block, dict):
        source = block.get("source")
    if source is None:
        return donor_ref, False
    if not isinstance(source, str):
        raise RecipeError("tokenizer_source must be `base` or one of the recipe's model references; "
                          "mergekit's tokenizer dictionaries are not supported.")
    if source == "base":
        if recipe.base_model is None:
            raise RecipeError("tokenizer_source: base needs a base_model; set base_model or name a model instead.")
        return recipe.base_model, True
    if source == "union":
        raise RecipeError("tokenizer_source: union (building a merged vocabulary) is not supported; use "
                          "tokenizer_source: base to cut or pad every model's embeddings to the base vocabulary.")
    known = {entry.model for entry in recipe.models} | ({recipe.base_model} if recipe.base_model else set())
    if source not in known:
        raise RecipeError(f"tokenizer_source {source!r} is not a model of this recipe; use `base` or one of "
                          f"{sorted(known)}.")
    return source, True


def open_inputs(recipe: Any, *, allow_pickle: bool = False, cache_dir: str | None = None) -> MergeInputs:
    """Open every model the recipe names (raises SourceError / RecipeError, closing what was opened)."""
    refs = list(dict.fromkeys(([recipe.base_model] if recipe.base_model else []) +
                              [entry.model for entry in recipe.models]))
    if not refs:
        raise RecipeError("The recipe names no models: add a `models:` list.")
    donor = recipe.base_model or recipe.models[0].model
    tok_ref, resolve = tokenizer_ref(recipe, donor)
    sources: dict[str, ModelSource] = {}
    try:
        for ref in refs:
            sources[ref] = open_model(ref, allow_pickle=allow_pickle, cache_dir=cache_dir)
    except BaseException:
        for source in sources.values():
            source.close()
        raise
    renamed = _align_names(sources, recipe.base_model)
    return MergeInputs(recipe=recipe, sources=sources, base_ref=recipe.base_model,
                       operand_refs=operand_refs(recipe), donor_ref=donor, tokenizer_ref=tok_ref,
                       resolve_vocab=resolve, renamed=renamed)


def is_vocab_mismatch(inputs: MergeInputs, name: str) -> bool:
    """True when `name` differs across models only in its first (vocabulary) dimension, and that dimension is each
    model's vocabulary size as far as the configs say: the embedding / lm_head case `tokenizer_source` resolves."""
    shapes = {ref: src.shape(name) for ref, src in inputs.sources.items() if name in src.tensor_names()}
    if len({s for s in shapes.values()}) <= 1:
        return False
    if any(len(s) == 0 or s[1:] != next(iter(shapes.values()))[1:] for s in shapes.values()):
        return False
    for ref, shape in shapes.items():
        vocab = inputs.sources[ref].vocab_size
        if vocab is not None and shape[0] != vocab:
            return False
    return True


def fit_rows(tensor: torch.Tensor, donor: torch.Tensor) -> torch.Tensor:
    """Cut `tensor` to the donor's number of rows, or pad it with the donor's rows (a zero task vector there)."""
    rows = donor.shape[0]
    if tensor.shape[0] >= rows:
        return tensor[:rows]
    return torch.cat([tensor, donor[tensor.shape[0]:].to(tensor.dtype)], dim=0)


# --- tensor names: legacy checkpoints read under the names transformers gives them -----------------------------


class RenamedSource:
    """A model source whose tensors are seen under other names; everything else is the wrapped source's."""

    def __init__(self, source: ModelSource, names: dict[str, str]) -> None:  # name seen -> name stored
        self._source = source
        self._names = names

    def tensor_names(self) -> list[str]:
        return list(self._names)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._source.shape(self._names[name])

    def dtype(self, name: str) -> torch.dtype:
        return self._source.dtype(self._names[name])

    def nbytes(self, name: str) -> int:
        return self._source.nbytes(self._names[name])

    def get(self, name: str) -> torch.Tensor:
        return self._source.get(self._names[name])

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._source, attr)

    def __repr__(self) -> str:
        return f"RenamedSource({self._source!r})"


_LEGACY_NORM = re.compile(r"(LayerNorm|layer_norm)\.(gamma|beta)$")


def _align_names(sources: dict[str, Any], base_ref: str | None) -> dict[str, str]:
    """Rename in place what transformers renames on load, so models saved years apart line up:
    - `LayerNorm.gamma` / `.beta` (google-bert/bert-base-uncased's checkpoint) -> `.weight` / `.bias`;
    - a base saved without the head models' base prefix (openai-community/gpt2: `h.0...`, its classifiers:
      `transformer.h.0...`) is read with the prefix. Returns ref -> what was done, for the pre-flight report."""
    done: dict[str, str] = {}
    for ref, src in list(sources.items()):
        names = src.tensor_names()
        present = set(names)
        mapping = {}
        for n in names:
            new = _LEGACY_NORM.sub(lambda m: f"{m.group(1)}.{'weight' if m.group(2) == 'gamma' else 'bias'}", n)
            mapping[new if new not in present else n] = n
        if len(mapping) == len(names) and any(k != v for k, v in mapping.items()):
            sources[ref] = RenamedSource(src, mapping)
            done[ref] = "LayerNorm gamma/beta read as weight/bias (legacy names, as transformers loads them)"
    if base_ref is None or base_ref not in sources:
        return done
    base = sources[base_ref]
    base_names = set(base.tensor_names())
    prefixes = set()
    for ref, src in sources.items():
        if ref == base_ref:
            continue
        names = src.tensor_names()
        if set(names) & base_names:
            continue
        firsts = {n.split(".", 1)[0] for n in names if "." in n and n.split(".", 1)[1] in base_names}
        prefixes |= {p for p in firsts
                     if sum(n.startswith(p + ".") and n[len(p) + 1:] in base_names for n in names) * 2 > len(base_names)}
    if len(prefixes) == 1:
        prefix = prefixes.pop()
        sources[base_ref] = RenamedSource(base, {f"{prefix}.{n}": n for n in base.tensor_names()})
        done[base_ref] = "; ".join(filter(None, [done.get(base_ref), (f"tensors read with the `{prefix}.` prefix "
                                                 "its fine-tunes use (it was saved without it)")]))
    return done


# --- per-task heads (a base plus classifiers fine-tuned from it, each with its own head) ------------------------

HEAD_CLASSES = ("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering",
                "ForMultipleChoice")
_LAYER_TENSOR = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.\d+\.")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class TaskHeads:
    """The GLUE-teachers layout: experts of a head class (`*ForSequenceClassification`, ...) fine-tuned from a base of
    the same model type. Tensors every input has are merged; the rest are never merged."""

    shared: list[str]  # tensors every input has: merged (in the base's order)
    base_only: list[str]  # base tensors some expert lacks (e.g. a pretraining head): copied from the base
    heads: dict[str, list[str]]  # expert ref -> its tensors the base lacks (its head)
    own: dict[str, list[str]]  # expert ref -> its tensors that are not merged (head + anything not shared), if any
    tasks: dict[str, str]  # expert ref -> task name (folder name of the expert; unique, safe as a folder name)
    # Problems (the pre-flight check reports them as errors; the engine runs only without them):
    foreign: list[str] = field(default_factory=list)  # models neither of the base's class nor a head class of its type
    layer_gaps: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)  # ref -> (missing, added) in layers


def task_name(ref: str, path: Path | None = None) -> str:
    """A task's name: the expert's folder name for a local folder, the repository name for a Hub id."""
    local = Path(ref).expanduser()
    name = local.name if local.exists() or path is None else ref.rstrip("/").rsplit("/", 1)[-1]
    return _UNSAFE.sub("_", name).strip("._") or "task"


_ARCH_CLASS = re.compile(r"^(\w+?)(For[A-Z]\w*|LMHeadModel|PreTrainedModel|Model)$")


def _model_type(src: Any) -> str | None:
    """The config's model_type; configs saved by old transformers lack it: then the architecture's stem, lowercased
    (`BertForSequenceClassification` -> `bert`)."""
    if src.config.get("model_type"):
        return str(src.config["model_type"])
    match = _ARCH_CLASS.match(src.architecture or "")
    return match.group(1).lower() if match else None


def _mask_buffer(name: str, shape: tuple[int, ...]) -> bool:
    """Old GPT-2 checkpoints' causal-mask buffers (`h.N.attn.bias` of shape (1, 1, n, n), `h.N.attn.masked_bias`),
    which models saved since do not hold: a base's own, not weights its fine-tunes lack."""
    return ((name.endswith("attn.bias") and len(shape) == 4 and shape[:2] == (1, 1))
            or (name.endswith("attn.masked_bias") and len(shape) == 0))


def task_heads(inputs: MergeInputs) -> TaskHeads | None:
    if "_task_heads" not in inputs.__dict__:  # headers only, but asked by several checks: worked out once
        inputs.__dict__["_task_heads"] = _find_task_heads(inputs)
    return inputs.__dict__["_task_heads"]


def _find_task_heads(inputs: MergeInputs) -> TaskHeads | None:
    """The per-task-heads layout, or None when the models do not have it (then the ordinary checks apply). It needs
    a base and at least one model of the base's `model_type` whose architecture is a head class other than the
    base's (`BertForSequenceClassification` over `BertForPreTraining`). Tensors a model lacks or adds relative to the
    base outside the numbered layers are heads; what else is wrong (`foreign` models, tensors missing or added
    inside layers, shapes, depth) the pre-flight check reports as errors."""
    if inputs.base_ref is None:
        return None
    base = inputs.base
    model_type = _model_type(base)
    others = {ref: src for ref, src in inputs.sources.items() if ref != inputs.base_ref}

    def head_class(src: ModelSource) -> bool:
        arch = src.architecture or ""
        return _model_type(src) == model_type and arch != base.architecture and arch.endswith(HEAD_CLASSES)

    if not model_type or not any(head_class(src) for src in others.values()):
        return None
    base_names = base.tensor_names()
    base_set = set(base_names)
    heads: dict[str, list[str]] = {}
    foreign: list[str] = []
    layer_gaps: dict[str, tuple[list[str], list[str]]] = {}
    for ref, src in others.items():
        names = set(src.tensor_names())
        if names == base_set and src.architecture == base.architecture:
            continue
        if not head_class(src):
            foreign.append(ref)
            continue
        gaps = _layer_gaps(base, base_set, names)
        if gaps[0] or gaps[1]:
            layer_gaps[ref] = gaps
        heads[ref] = sorted(n for n in names - base_set if not _LAYER_TENSOR.search(n))
    other_names = [set(src.tensor_names()) for src in others.values()]
    shared = [n for n in base_names if all(n in names for names in other_names)]
    shared_set = set(shared)
    own = {ref: mine for ref in heads if (mine := [n for n in others[ref].tensor_names() if n not in shared_set])}
    return TaskHeads(shared=shared, base_only=[n for n in base_names if n not in shared_set], heads=heads, own=own,
                     tasks=_task_names(heads, others), foreign=foreign, layer_gaps=layer_gaps)


def _layer_gaps(base: ModelSource, base_set: set[str], names: set[str]) -> tuple[list[str], list[str]]:
    """(tensors inside the numbered layers a model lacks, those it adds) relative to the base; the base's causal-mask
    buffers are not weights a model can lack."""
    missing = sorted(n for n in base_set - names if _LAYER_TENSOR.search(n) and not _mask_buffer(n, base.shape(n)))
    return missing, sorted(n for n in names - base_set if _LAYER_TENSOR.search(n))


def _task_names(heads: dict[str, list[str]], sources: dict[str, ModelSource]) -> dict[str, str]:
    """Expert ref -> its task name, made unique (`name`, `name-2`, ...) in the experts' order."""
    taken: set[str] = set()
    tasks: dict[str, str] = {}
    for ref in heads:
        name = task_name(ref, sources[ref].path)
        unique, k = name, 2
        while unique in taken:
            unique, k = f"{name}-{k}", k + 1
        taken.add(unique)
        tasks[ref] = unique
    return tasks
