"""What a sweep varies: an `Axis` names one of the Merge panel's settings and holds the values it takes.

An axis's `key` is how the page, the results files and the command line name it: "weight" (every source's weight),
"weight:<source>" (one source's weight, the others as the settings say), a parameter's name ("density", "lambda",
"t", ...), or "trial" (a search's proposals in order: no setting). Which settings a method offers comes from its
declarations' roles, never from a list of names: the weight is the parameter with role "weight", the density axis
the one with role "kept_fraction", λ the one with role "scale"; tolerances are never an axis. A point of a settings
sweep is `Axis.apply`'d to typed `merging.settings.MergeSettings`, so a kept point merges to what was scored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from evaluation.errors import SweepError
from merging.methods.registry import Param, get_method
from merging.settings import MergeSettings

WEIGHT = "weight"  # the key of the every-source weight axis; "weight:<source>" is one source's
TRIAL = "trial"  # the key of a search's proposals shown as a sweep (row: the trial number)
_TITLES = {WEIGHT: "weight (every source)", "lambda": "λ (scale of the merged task vector)"}


@dataclass(frozen=True)
class Axis:
    """One setting a grid varies (`key`, see the module docstring) and the values it takes, in grid order."""

    key: str
    values: tuple[float | None, ...] = ()

    @property
    def source(self) -> str | None:
        """The one source whose weight this axis sets; None for every source's weight, a parameter or a trial."""
        return self.key.split(":", 1)[1] if self.key.startswith(WEIGHT + ":") else None

    @property
    def sets_weights(self) -> bool:
        return self.key == WEIGHT or self.source is not None

    @property
    def title(self) -> str:
        """How the page and the charts name the axis: "weight of math", "λ (scale of the merged task vector)"."""
        return f"weight of {self.source}" if self.source is not None else _TITLES.get(self.key, self.key)

    def apply(self, settings: MergeSettings, value: float, sources: Sequence[str]) -> MergeSettings:
        """`settings` with this axis's setting at `value` (a new value; `settings` is left alone). The every-source
        weight turns the method's `normalize` off: normalising divides equal weights out, so the axis would change
        nothing."""
        method = get_method(settings.method)
        weights, params = list(settings.weights), dict(settings.params)
        if self.key == WEIGHT:
            weights = [value] * len(sources)
            if method.param("normalize") is not None:
                params["normalize"] = False
        elif self.source is not None:
            if self.source not in sources:
                raise SweepError(f"No source named {self.source!r} to vary: choose one of {', '.join(sources)}.")
            weights[list(sources).index(self.source)] = value
        else:
            params[self.key] = int(value) if method.param(self.key).kind == "int" else value
        return dataclasses.replace(settings, weights=weights, params=params)


def sweepable(param: Param) -> bool:
    """A numeric parameter a settings sweep may vary by name: not the weight (its own axes) nor a tolerance (a
    numerical floor such as RAM's epsilon, whose sweep would only show rounding)."""
    return param.kind in ("float", "int") and param.role not in ("weight", "tolerance")


def kept_fraction(method: str) -> Param | None:
    """The method's fraction of entries kept (density, SCE's select_topk), the sweeps' density axis; or None."""
    return get_method(method).by_role("kept_fraction")


def axis_choices(method: str, sources: Sequence[str]) -> list[str]:
    """The keys of the settings a sweep of `method` can vary: per-model weights and its numeric parameters."""
    spec = get_method(method)
    choices = []
    if spec.weight is not None:
        choices += [WEIGHT, *(f"{WEIGHT}:{s}" for s in sources)] if len(sources) > 1 else [WEIGHT]
    choices += [p.name for p in spec.params if sweepable(p)]
    return choices


def default_axes(method: str, params: Mapping[str, Any], sources: Sequence[str] = ()
                 ) -> tuple[str | None, str | None]:
    """Row and column keys worth looking at first. With a density (or SCE's select_topk) it is the columns, against
    the shared weight for every method with a weight (a shared-weight point turns normalize off: see Axis.apply),
    else λ; without one, two sources' weights against each other; otherwise the method's own numeric parameter
    (slerp's t). `params` is kept for callers; the choice no longer depends on it."""
    spec = get_method(method)
    fraction = spec.by_role("kept_fraction")
    numeric = [p.name for p in spec.params if sweepable(p)]
    has_weight = spec.weight is not None
    scale = spec.by_role("scale")
    other = scale.name if scale is not None else None  # λ
    if fraction:
        if has_weight:
            return WEIGHT, fraction.name
        return (other, fraction.name) if other else (fraction.name, None)
    if has_weight and len(sources) >= 2:
        return f"{WEIGHT}:{sources[0]}", f"{WEIGHT}:{sources[1]}"
    if has_weight:
        return WEIGHT, other
    return (numeric[0], None) if numeric else (None, None)


def axis_range(method: str, key: str) -> tuple[float, float]:
    """The range of an axis: the parameter's ui_range (the useful part of wide bounds), else its bounds."""
    spec = get_method(method)
    axis = Axis(key)
    param = spec.weight if axis.sets_weights else spec.param(key)
    if param is None:
        raise SweepError(f"{method} has no parameter {key!r}: vary one of {', '.join(axis_choices(method, []))}.")
    if param.ui_range is not None:
        return float(param.ui_range[0]), float(param.ui_range[1])
    return (param.low if param.low is not None else 0.0, param.high if param.high is not None else 1.0)


def apply_axis(settings: MergeSettings | Mapping[str, Any], key: str, value: float, sources: Sequence[str]
               ) -> dict[str, Any]:
    """The settings ({method, weights, params, seed}, as /merge takes them) with one setting set to `value`."""
    typed = settings if isinstance(settings, MergeSettings) else MergeSettings.from_dict(dict(settings))
    return Axis(key).apply(typed, value, sources).to_dict()
