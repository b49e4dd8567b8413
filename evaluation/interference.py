"""How task vectors interfere: cosine similarity between them, sign conflicts, what TIES trimming keeps at a
density, and how much the kept entries of different tasks overlap.

Pure tensor functions first; then `interference_report` walks state dicts tensor by tensor (any Mapping, so lazy
readers work and memory stays at one tensor of each model) and aggregates per layer and module type. Aggregates are
computed from summed counts and dot products, not by averaging per-tensor ratios, so large tensors weigh as they
should (a group's cosine is the cosine of the concatenated vectors).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from merging.errors import CompatibilityError, MergeLabError
from merging.methods.task_arithmetic import TIES_MEAN
from merging.recipe import Recipe
from merging.step import MergeStep

_LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)\.")
# First match wins: norms before the projections whose names they contain (BERT "attention.output.LayerNorm").
_MODULE_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("norm", ("norm", "ln_", "layernorm")),
    ("embed", ("embed", "wte", "wpe")),
    ("head", ("lm_head", "classifier", "pooler", "score.")),
    ("q_proj", ("q_proj", ".query.", "q_lin")),
    ("k_proj", ("k_proj", ".key.", "k_lin")),
    ("v_proj", ("v_proj", ".value.", "v_lin")),
    ("o_proj", ("o_proj", "attention.output.dense", "out_proj", "attn.c_proj", "out_lin")),
    ("mlp", ("mlp", "gate_proj", "up_proj", "down_proj", "intermediate", "output.dense", "fc1", "fc2", "c_fc", "ffn")),
)
MODULE_ORDER = ("embed", "q_proj", "k_proj", "v_proj", "o_proj", "mlp", "norm", "head", "other")  # for display


def module_type(tensor_name: str) -> str:
    """q_proj | k_proj | v_proj | o_proj | mlp | embed | norm | head | other."""
    lowered = tensor_name.lower()
    for name, needles in _MODULE_RULES:
        if any(n.lower() in lowered for n in needles):
            return name
    return "other"


def layer_index(tensor_name: str) -> int | None:
    """The transformer layer a tensor belongs to, None for embeddings, final norm and heads."""
    match = _LAYER.search(tensor_name)
    return int(match.group(1)) if match else None


# --- pure tensor functions ---------------------------------------------------------------------------------------


def _flat(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([v.detach().reshape(-1).to(torch.float32) for v in vectors])


def cosine_matrix(vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """T x T cosine similarity between task vectors (0 where a vector is all zeros)."""
    flat = _flat(vectors).double()
    norms = flat.norm(dim=1)
    dots = flat @ flat.T
    denominator = torch.outer(norms, norms)
    return torch.where(denominator > 0, dots / denominator.clamp_min(1e-300), torch.zeros_like(dots)).float()


def sign_conflicts(vectors: Sequence[torch.Tensor]) -> tuple[int, int]:
    """(entries where non-zero task vectors disagree in sign, entries non-zero in at least two task vectors)."""
    flat = _flat(vectors)
    positive, negative = (flat > 0).sum(dim=0), (flat < 0).sum(dim=0)
    eligible = (positive + negative) >= 2
    conflicting = eligible & (positive > 0) & (negative > 0)
    return int(conflicting.sum()), int(eligible.sum())


def sign_conflict_rate(vectors: Sequence[torch.Tensor]) -> float | None:
    conflicting, eligible = sign_conflicts(vectors)
    return conflicting / eligible if eligible else None


def trim_mask(vector: torch.Tensor, density: float) -> torch.Tensor:
    """TIES trimming: the top `density` share of entries by magnitude (k = int(density * numel), as mergekit), of
    which only the non-zero ones count as kept."""
    if not 0.0 <= density <= 1.0:
        raise MergeLabError(f"density must be between 0 and 1 (got {density}).")
    flat = vector.detach().reshape(-1).abs()
    k = int(density * flat.numel())
    mask = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        mask[torch.topk(flat, k, sorted=False).indices] = True
    return (mask & (flat > 0)).reshape(vector.shape)


def kept_share(vector: torch.Tensor, density: float) -> tuple[float | None, float | None]:
    """(share of the vector's magnitude mass that trimming keeps, share of its non-zero entries it keeps)."""
    mask = trim_mask(vector, density)
    magnitude = vector.detach().abs().to(torch.float64)
    total, nonzero = float(magnitude.sum()), int((magnitude > 0).sum())
    if nonzero == 0:
        return None, None
    return float(magnitude[mask].sum()) / total, int(mask.sum()) / nonzero


def jaccard_matrix(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """T x T |A ∩ B| / |A ∪ B| of kept-entry masks (1 on the diagonal; 0 where both are empty)."""
    flat = torch.stack([m.reshape(-1).to(torch.float32) for m in masks])
    intersection = flat @ flat.T
    sizes = flat.sum(dim=1)
    union = sizes[:, None] + sizes[None, :] - intersection
    result = torch.where(union > 0, intersection / union.clamp_min(1), torch.zeros_like(union))
    result.fill_diagonal_(1.0)
    return result


# --- aggregation -------------------------------------------------------------------------------------------------


@dataclass
class _Sums:
    """Additive statistics of a group of tensors, from which every ratio of the report is computed."""

    tasks: int
    dots: torch.Tensor = None  # T x T float64
    intersections: torch.Tensor = None  # T x T
    kept_count: torch.Tensor = None  # T
    kept_mass: torch.Tensor = None  # T
    mass: torch.Tensor = None  # T
    nonzero: torch.Tensor = None  # T
    conflicting: int = 0
    eligible: int = 0
    numel: int = 0
    contested: int = 0  # entries kept by trimming in two or more vectors whose signs conflict
    won: torch.Tensor = None  # T: of those, how many each task's sign won (TIES' elected sign, weights 1)

    def __post_init__(self) -> None:
        t = self.tasks
        self.dots = torch.zeros(t, t, dtype=torch.float64)
        self.intersections = torch.zeros(t, t, dtype=torch.float64)
        for name in ("kept_count", "kept_mass", "mass", "nonzero", "won"):
            setattr(self, name, torch.zeros(t, dtype=torch.float64))

    def add(self, other: _Sums) -> None:
        for name in ("dots", "intersections", "kept_count", "kept_mass", "mass", "nonzero", "won"):
            getattr(self, name).add_(getattr(other, name))
        self.conflicting += other.conflicting
        self.eligible += other.eligible
        self.numel += other.numel
        self.contested += other.contested

    def summary(self, task_names: list[str]) -> dict[str, Any]:
        norms = self.dots.diagonal().sqrt()
        denominator = torch.outer(norms, norms)
        cosine = torch.where(denominator > 0, self.dots / denominator.clamp_min(1e-300), torch.zeros_like(self.dots))
        sizes = self.kept_count
        union = sizes[:, None] + sizes[None, :] - self.intersections
        jaccard = torch.where(union > 0, self.intersections / union.clamp_min(1), torch.zeros_like(union))
        jaccard.fill_diagonal_(1.0)
        off = ~torch.eye(self.tasks, dtype=torch.bool)
        return {
            "numel": self.numel,
            "sign_conflict_rate": self.conflicting / self.eligible if self.eligible else None,
            "mean_cosine": float(cosine[off].mean()) if self.tasks > 1 else None,
            "mean_jaccard": float(jaccard[off].mean()) if self.tasks > 1 else None,
            "cosine": cosine.float().tolist(),
            "jaccard": jaccard.float().tolist(),
            "kept_mass_share": {t: _ratio(self.kept_mass[i], self.mass[i]) for i, t in enumerate(task_names)},
            "kept_count_share": {t: _ratio(self.kept_count[i], self.nonzero[i]) for i, t in enumerate(task_names)},
            "contested": self.contested,
            "election_wins": {t: _ratio(self.won[i], torch.tensor(float(self.contested)))
                              for i, t in enumerate(task_names)},
        }


def _ratio(a: torch.Tensor, b: torch.Tensor) -> float | None:
    return float(a / b) if float(b) > 0 else None


def tensor_sums(vectors: Sequence[torch.Tensor], density: float) -> _Sums:
    """The additive statistics of one tensor's task vectors. Works in float32 with boolean masks (no float64 copy
    of a 7B model's embedding), counting in int64 so large tensors count exactly."""
    flat = _flat(vectors)
    count = len(vectors)
    sums = _Sums(count)
    sums.dots = (flat @ flat.T).double()
    masks = [trim_mask(row, density) for row in flat]
    for i in range(count):
        magnitude = flat[i].abs()
        sums.kept_count[i] = int(masks[i].sum())
        sums.mass[i] = float(magnitude.double().sum())
        sums.kept_mass[i] = float(magnitude[masks[i]].double().sum())
        sums.nonzero[i] = int((magnitude > 0).sum())
        for j in range(i, count):
            both = int((masks[i] & masks[j]).sum())
            sums.intersections[i, j] = sums.intersections[j, i] = both
    sums.conflicting, sums.eligible = sign_conflicts(vectors)
    sums.numel = flat.shape[1]
    sums.contested, sums.won = election_wins(flat, masks)
    return sums


def election_wins(flat: torch.Tensor, masks: Sequence[torch.Tensor]) -> tuple[int, torch.Tensor]:
    """(entries kept in two or more trimmed task vectors with conflicting signs, per task how many of them its sign
    wins): TIES elects the sign of the kept values' sum (weights 1), and a task whose sign loses is dropped there.
    This links a layer's conflicts to the task that pays for them."""
    kept = torch.stack([row * m.reshape(-1) for row, m in zip(flat, masks)])
    positive, negative = (kept > 0).sum(dim=0), (kept < 0).sum(dim=0)
    contested = (positive > 0) & (negative > 0)
    elected = torch.sign(kept.sum(dim=0))
    wins = ((torch.sign(kept) == elected) & (kept != 0) & contested).sum(dim=1).double()
    return int(contested.sum()), wins


@dataclass
class InterferenceReport:
    tasks: list[str]
    density: float
    overall: dict[str, Any]
    by_layer: dict[str, dict[str, Any]]  # "0", "1", ... and "none" for tensors outside the layers
    by_module: dict[str, dict[str, Any]]
    cells: list[dict[str, Any]]  # one per (layer, module type) present
    tensors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def layers(self) -> list[str]:
        return list(self.by_layer)

    @property
    def modules(self) -> list[str]:
        return list(self.by_module)

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "density": self.density, "overall": self.overall, "by_layer": self.by_layer,
                "by_module": self.by_module, "cells": self.cells, "tensors": self.tensors}


def _layer_key(index: int | None) -> str:
    return "none" if index is None else str(index)


def interference_report(
    base: Mapping[str, torch.Tensor],
    experts: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    density: float = 0.5,
    names: Iterable[str] | None = None,
    per_tensor: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> InterferenceReport:
    """Interference between the task vectors (expert − base) of at least two experts, over the floating-point
    tensors that the base and every expert share with the same shape (per-task heads are left out)."""
    task_names = list(experts)
    if len(task_names) < 2:
        raise MergeLabError("Interference needs at least two experts (task vectors) besides the base.")
    if not 0.0 <= density <= 1.0:
        raise MergeLabError(f"density must be between 0 and 1 (got {density}).")
    shared = _shared_names(base, experts, names)
    groups = _Groups(len(task_names))
    tensors = []
    for step, name in enumerate(shared, start=1):
        vectors = _task_vectors(base, experts, task_names, name)
        if vectors is None:
            continue
        sums = tensor_sums(vectors, density)
        layer, module = _layer_key(layer_index(name)), module_type(name)
        groups.add(layer, module, sums)
        if per_tensor:
            tensors.append({"name": name, "layer": layer, "module": module, **sums.summary(task_names)})
        if progress is not None:
            progress(step, len(shared))
    if groups.overall.numel == 0:
        raise CompatibilityError("No tensor has a task vector (shapes differ everywhere): merge-compatible experts "
                                 "share tensor names and shapes with the base.")
    return groups.report(task_names, density, tensors)


def _shared_names(base: Mapping[str, torch.Tensor], experts: Mapping[str, Mapping[str, torch.Tensor]],
                  names: Iterable[str] | None) -> list[str]:
    """The tensor names (`names`, default all of the base's) that every expert has too."""
    candidates = list(names) if names is not None else list(base.keys())
    shared = [n for n in candidates if all(n in e for e in experts.values())]
    if not shared:
        raise CompatibilityError("The base and the experts share no tensor names: are they the same architecture?")
    return shared


def _task_vectors(base: Mapping[str, torch.Tensor], experts: Mapping[str, Mapping[str, torch.Tensor]],
                  task_names: list[str], name: str) -> list[torch.Tensor] | None:
    """Each expert's tensor `name` less the base's, in float32; None where the base's is not floating point or an
    expert's shape differs (a per-task head or a resized vocabulary: not a task vector)."""
    base_tensor = base[name]
    if not base_tensor.is_floating_point():
        return None
    expert_tensors = [experts[t][name] for t in task_names]
    if any(tuple(e.shape) != tuple(base_tensor.shape) for e in expert_tensors):
        return None
    return [e.to(torch.float32) - base_tensor.to(torch.float32) for e in expert_tensors]


class _Groups:
    """The report's running sums: over everything, per layer, per module type and per (layer, module type) cell."""

    def __init__(self, tasks: int) -> None:
        self.tasks = tasks
        self.overall = _Sums(tasks)
        self.layers: dict[str, _Sums] = {}
        self.modules: dict[str, _Sums] = {}
        self.cells: dict[tuple[str, str], _Sums] = {}

    def add(self, layer: str, module: str, sums: _Sums) -> None:
        for groups, key in ((self.layers, layer), (self.modules, module), (self.cells, (layer, module))):
            groups.setdefault(key, _Sums(self.tasks)).add(sums)
        self.overall.add(sums)

    def report(self, task_names: list[str], density: float, tensors: list[dict[str, Any]]) -> InterferenceReport:
        """Layers in order ("none" last), module types in MODULE_ORDER, cells in layer then module order."""
        layer_order = sorted(self.layers, key=lambda k: (k == "none", int(k) if k != "none" else 0))
        module_order = [m for m in MODULE_ORDER if m in self.modules]
        return InterferenceReport(
            tasks=task_names, density=density, overall=self.overall.summary(task_names),
            by_layer={k: self.layers[k].summary(task_names) for k in layer_order},
            by_module={k: self.modules[k].summary(task_names) for k in module_order},
            cells=[{"layer": layer, "module": module, **self.cells[(layer, module)].summary(task_names)}
                   for layer in layer_order for module in module_order if (layer, module) in self.cells],
            tensors=tensors,
        )


# --- the lesson: a reference for unrelated vectors and a worked example ------------------------------------------


def random_conflict_rate(tasks: int) -> float:
    """The sign-conflict rate unrelated task vectors would show: with independent signs, equally likely + or −, an
    entry non-zero in all `tasks` vectors has them all agree with probability 2 · 2^−tasks (all + or all −), so it
    conflicts with probability 1 − 2^(1 − tasks): 50 % for two tasks, 75 % for three. Measured rates below this
    line mean the tasks pull the same way more often than chance; above it, against each other."""
    if tasks < 2:
        raise MergeLabError("A sign conflict needs at least two task vectors.")
    return 1.0 - 2.0 ** (1 - tasks)


# Methods whose trimming is the deterministic top-`density` by magnitude that trim_mask computes: the example marks
# the trimmed entries for them. (DARE and DELLA drop at random, breadcrumbs also drops the largest: not marked.)
MAGNITUDE_TRIMMED = ("ties", "magnitude_prune")
WORKED_BASE = "base"  # the base's name in the default recipe of a worked example


@dataclass
class WorkedExample:
    """A few entries of one tensor's task vectors, as a merge method handles them: the method's merged value (from
    the registered method itself), and for the methods that do so, which entries trimming drops and the sign elected.
    `rows`: one dict per entry (index, each task's value, kept per task or None, whether the signs conflict, the
    elected sign or None, the merged task vector's value). `weights`: each task's weight; `density`: None when the
    method keeps every entry."""

    tensor: str
    tasks: list[str]
    density: float | None
    rows: list[dict[str, Any]]
    method: str = "ties"
    weights: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "tasks": self.tasks, "density": self.density, "rows": self.rows,
                "method": self.method, "weights": self.weights}


def ties_recipe(tasks: Sequence[str], density: float) -> Recipe:
    """TIES at `density` with every weight 1 and λ 1 over `tasks` (the worked example's default)."""
    return Recipe.from_dict({"merge_method": "ties", "base_model": WORKED_BASE, "parameters": {"density": density},
                             "models": [{"model": t, "parameters": {"weight": 1.0}} for t in tasks]})


def worked_example(base: Mapping[str, torch.Tensor], experts: Mapping[str, Mapping[str, torch.Tensor]], name: str,
                   *, density: float = 0.5, entries: int = 6, recipe: Recipe | None = None, num_layers: int = 1,
                   seed: int = 0) -> WorkedExample:
    """`entries` entries of tensor `name` where the first two task vectors disagree in sign (the largest such
    disagreements first, then agreements to fill), with what `recipe`'s method makes of each (default: TIES at
    `density`, weights 1). The recipe names the models as `experts` does (its base as `WORKED_BASE`, or any name not
    among the experts); the merged value comes from merging.step.MergeStep, as the engine and live merging compute
    it (`num_layers` and `seed` as theirs). For TIES and magnitude_prune the trimmed entries are marked (the top
    share by magnitude over the whole tensor); for methods that elect a sign per entry, the elected sign is the
    merged value's."""
    tasks = list(experts)
    vectors = _task_vectors(base, experts, tasks, name)
    if vectors is None or len(tasks) < 2:
        raise MergeLabError(f"{name} has no task vectors to show (not shared with the same shape by two experts).")
    recipe = recipe if recipe is not None else ties_recipe(tasks, density)
    step = MergeStep(recipe, num_layers, seed)
    model_params, params = step.parameters(name)
    own = _params_by_task(recipe, tasks, model_params)
    kept_fraction = step.method.by_role("kept_fraction")
    densities = [float(p[kept_fraction.name]) if kept_fraction is not None and p else None for p in own]
    flat = [v.reshape(-1) for v in vectors]
    trims = step.method.name in MAGNITUDE_TRIMMED and None not in densities
    masks = [trim_mask(v, d) if trims else torch.ones_like(v, dtype=torch.bool) for v, d in zip(flat, densities)]
    merged = (_merged_tensor(step, name, base, experts) - base[name].float()).reshape(-1)
    # a sign-electing method's merged value has the elected sign, times the sign of its scale λ
    elects = TIES_MEAN in step.method.formula
    flip = -1.0 if float(params.get("lambda", 1.0)) < 0 else 1.0
    rows = [_entry(i, flat, masks if trims else None, tasks, float(merged[i]), elects, flip)
            for i in _chosen_entries(flat, masks, entries)]
    weights = {t: float(p.get("weight", 1.0)) for t, p in zip(tasks, own, strict=True)}
    return WorkedExample(name, tasks, densities[0], rows, step.method.name, weights)


def _merged_tensor(step: MergeStep, name: str, base: Mapping[str, torch.Tensor],
                   experts: Mapping[str, Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """The recipe's merge of tensor `name` (the recipe's inputs by name: the experts, any other name the base)."""
    tensors = [experts.get(m, base)[name] for m in step.recipe.merge_inputs()]
    return step(name, base[name] if step.uses_base else None, tensors).float()


def _params_by_task(recipe: Recipe, tasks: list[str], model_params: list[dict]) -> list[dict]:
    """Each task's own resolved parameters at this tensor ({} for a task the recipe does not merge)."""
    by_input = dict(zip(recipe.merge_inputs(), model_params, strict=True))
    return [by_input.get(t, {}) for t in tasks]


def _chosen_entries(flat: list[torch.Tensor], masks: list[torch.Tensor], entries: int) -> list[int]:
    """The strongest conflicts between the first two task vectors, the strongest conflict trimming settles by
    dropping one side, the strongest agreement; then more conflicts to fill `entries`."""
    first, second = flat[0], flat[1]
    conflict = (first * second) < 0
    strength = torch.minimum(first.abs(), second.abs())
    one_trimmed = conflict & (masks[0] ^ masks[1])
    agree = (first * second) > 0
    picks = _strongest(conflict, strength, max(1, entries - 2)) + _strongest(one_trimmed, strength, 1) \
        + _strongest(agree, strength, 1)
    chosen = list(dict.fromkeys(picks))
    chosen += [i for i in _strongest(conflict, strength, entries) if i not in chosen][: entries - len(chosen)]
    return chosen[:entries]


def _strongest(where: torch.Tensor, strength: torch.Tensor, count: int) -> list[int]:
    """Indices of the `count` largest `strength` entries among those `where` is true."""
    scores = torch.where(where, strength, torch.full_like(strength, -1.0))
    top = torch.topk(scores, min(count, scores.numel())).indices.tolist()
    return [int(i) for i in top if bool(where[i])]


def _entry(index: int, flat: list[torch.Tensor], masks: list[torch.Tensor] | None, tasks: list[str], merged: float,
           elects: bool, flip: float = 1.0) -> dict[str, Any]:
    values = [float(v[index]) for v in flat]
    kept = None if masks is None else dict(zip(tasks, (bool(m[index]) for m in masks), strict=True))
    elected = (1 if merged * flip > 0 else -1 if merged * flip < 0 else 0) if elects else None
    return {"index": index, "values": dict(zip(tasks, values, strict=True)), "kept": kept,
            "conflict": any(v > 0 for v in values) and any(v < 0 for v in values), "elected": elected,
            "merged": merged}


def layers_changed(report: Any) -> dict[str, list[str]]:
    """Per task, the layers (report keys: "0", "1", ... and "none" outside the layers) where its task vector is not
    zero, in the report's order."""
    data = report.to_dict() if hasattr(report, "to_dict") else report
    return {task: [k for k, v in data["by_layer"].items() if v["kept_mass_share"].get(task) is not None]
            for task in data["tasks"]}


def most_conflicting_tensor(base: Mapping[str, torch.Tensor], experts: Mapping[str, Mapping[str, torch.Tensor]],
                            report: Any) -> str | None:
    """The tensor with the highest sign-conflict rate within the report's most conflicting layer (the lesson's
    worked example; reads that layer's tensors one at a time), or None where no entry anywhere is changed by two
    experts (experts on disjoint layers, as the SmolLM2 family's math and japanese): nothing can conflict."""
    data = report.to_dict() if hasattr(report, "to_dict") else report
    layers = {k: v["sign_conflict_rate"] for k, v in data["by_layer"].items() if v["sign_conflict_rate"] is not None}
    if not layers:
        return None
    worst = max(layers, key=layers.get)
    best_name, best_rate = None, -1.0
    for name in base:
        if _layer_key(layer_index(name)) != worst or not all(name in e for e in experts.values()):
            continue
        vectors = _task_vectors(base, experts, list(experts), name)
        rate = sign_conflict_rate(vectors) if vectors is not None else None
        if rate is not None and rate > best_rate:
            best_name, best_rate = name, rate
    return best_name
