"""The method registry: every merge method declares its parameters once, here, and recipe validation, the command
line and the UI all read that declaration.

A method is a pure tensor function (see DEVELOPERS.md, "Methods"). Methods that need to tell the caller something
about one tensor (SCE falling back to uniform coefficients, say) call `note(...)` (merging/methods/notes.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from merging.errors import RecipeError

Scope = Literal["model", "global"]
Kind = Literal["float", "bool", "int", "choice"]
BasePolicy = Literal["required", "optional", "ignored"]
# What a parameter is for, beyond its own method: the UI, sweeps, searches and messages read it (DEVELOPERS.md,
# "Methods"). None: an ordinary setting of the method (its own control; a sweep axis when numeric).
#   "weight"         a model's share of the merge (the one shared `params.weight`): a slider per source on the page,
#                    the sweeps' and searches' weight axis; named as a likely cause when huge
#   "kept_fraction"  the fraction of task-vector entries kept (density, SCE's select_topk): the density axis of sweeps
#                    and searches, carried over on the page when the method changes
#   "scale"          multiplies the merged (or copied) tensor (λ, passthrough's scale): the second sweep axis where
#                    there is no density; named as a likely cause when huge
#   "tolerance"      a numerical threshold or floor (karcher's tol, multislerp's eps, RAM's epsilon): never a sweep
#                    axis
#   "hidden"         accepted for mergekit compatibility and without effect here (int8_mask): not on the page
Role = Literal["weight", "kept_fraction", "scale", "tolerance", "hidden"]
ROLES: tuple[str, ...] = ("weight", "kept_fraction", "scale", "tolerance", "hidden")

MethodFn = Callable[[torch.Tensor | None, list[torch.Tensor], list[dict], dict, torch.Generator | None], torch.Tensor]


@dataclass(frozen=True, kw_only=True)
class Param:
    """One parameter of a method, declared with keywords. `scope="model"` values may be set per model or globally
    (per-model wins); `scope="global"` values only under the recipe's top-level `parameters`.

    Numeric parameters ("float", "int") declare both `low` and `high`: recipe validation refuses values outside them
    (and NaN/inf), so no recipe can make a merge run without end (karcher's max_iter) or overflow (a weight of 1e300).
    `ui_range` is the slider range to offer when the useful values are a small part of the bounds (weight −1..2 of
    ±100); without it a slider spans low..high. `ui_start` is where the page starts a control when `default` (kept as
    mergekit's, for recipes) makes the method a no-op: density 1 trims nothing, so TIES would start as a plain sum.
    `role` says what the parameter is for (see `Role`). `mergekit_values` lists (our value, what mergekit is given
    instead) for values mergekit 0.1.5 lacks (rescale's "inverse_density" → true); the export notes each one."""

    name: str
    scope: Scope
    default: Any
    low: float | None = None  # None only for "bool" and "choice"
    high: float | None = None
    kind: Kind
    help: str
    choices: tuple = ()
    required: bool = False  # no default: every model must get a value (mergekit's `weight`)
    ui_range: tuple[float, float] | None = None
    ui_start: Any = None
    role: Role | None = None
    mergekit_values: tuple[tuple[Any, Any], ...] = ()


@dataclass(frozen=True, kw_only=True)
class Mergekit:
    """How mergekit 0.1.5 runs a method: under `name` (None: the method's own name), with `parameters` added to the
    recipe's top-level ones (magnitude_prune is mergekit's breadcrumbs with gamma 0), and `note` saying why it is
    written differently (shown as a `# MergeLab:` comment). A Method without one is exported as a MergeLab recipe."""

    name: str | None = None
    parameters: tuple[tuple[str, Any], ...] = ()
    note: str = ""


SAME_IN_MERGEKIT = Mergekit()  # mergekit 0.1.5 has the method under the same name and parameter names


@dataclass(frozen=True)
class Method:
    name: str
    family: str
    explanation: str
    formula: str
    params: tuple[Param, ...]
    base: BasePolicy
    random: bool
    min_models: int  # counted over the `tensors` passed to fn (non-base inputs unless base is "ignored")
    max_models: int | None
    fn: MethodFn
    aliases: tuple[str, ...] = field(default=())
    mergekit: Mergekit | None = None  # None: mergekit 0.1.5 cannot run it (exported as a MergeLab recipe)
    # The per-model weight parameter (by_role("weight"); None: the method has none), found once when the method is
    # declared: the page's settings, the recipe built from them and the status line read it on every merge.
    weight: Param | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", self.by_role("weight"))  # frozen: set once, here

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def by_role(self, role: Role) -> Param | None:
        """The method's parameter with this role (a method has at most one of each but "tolerance"), or None."""
        return next((p for p in self.params if p.role == role), None)

    def mergekit_name(self) -> str | None:
        """The merge_method mergekit 0.1.5 runs this method as; None when it cannot."""
        return None if self.mergekit is None else self.mergekit.name or self.name

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params if not p.required}

    def __reduce_ex__(self, protocol: Any) -> Any:
        """A registered method pickles (and deep-copies) as its name: a recipe sent to a sweep worker holds the
        registry's own Method there too (its fn may be a closure, which pickle cannot carry)."""
        if _METHODS.get(self.name) is self:
            return get_method, (self.name,)
        return super().__reduce_ex__(protocol)


_METHODS: dict[str, Method] = {}
_FAMILY_MODULES = (
    "merging.methods.linear",
    "merging.methods.task_arithmetic",
    "merging.methods.sce",
    "merging.methods.interpolation",
    "merging.methods.model_stock",
    "merging.methods.passthrough",
    "merging.methods.arcee_fusion",
    "merging.methods.ram",
)
_loaded = False


def register(method: Method) -> Method:
    """Make a method available by name (and its aliases); registering a name twice is a programming error."""
    for name in (method.name, *method.aliases):
        if name in _METHODS and _METHODS[name] is not method:
            raise ValueError(f"merge method {name!r} is already registered")
        _METHODS[name] = method
    return method


def _ensure_loaded() -> None:
    """Import every family module once. A module that fails to import (a misspelt name included) fails the lookup
    loudly: a silently missing family would only show up as 'unknown merge_method' much later."""
    global _loaded
    if _loaded:
        return
    for module in _FAMILY_MODULES:
        importlib.import_module(module)
    _loaded = True


def get_method(name: str) -> Method:
    _ensure_loaded()
    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(m.name for m in list_methods())
        raise RecipeError(f"unknown merge_method {name!r}: use one of {known}") from None


def list_methods() -> list[Method]:
    """Each method once (aliases not repeated), in registration order."""
    _ensure_loaded()
    seen: dict[str, Method] = {}
    for method in _METHODS.values():
        seen.setdefault(method.name, method)
    return list(seen.values())

