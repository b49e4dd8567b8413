"""What the Merge panel's controls say, as one typed value every layer above merging/ shares: a method, one weight
per source, the method's other parameters and a seed (`MergeSettings`). `MergeSettings.from_dict` checks JSON (the
/merge endpoints, the page, a sweep point) field by field before any work, each refusal naming the field. The page
(ui/), sweeps and searches (evaluation/) build and edit settings through this one type; turning settings into a
recipe needs the session's sources and lives in ui.workspace.build_recipe."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from merging.errors import RecipeError
from merging.methods.registry import Method, get_method


@dataclass
class MergeSettings:
    """What the Merge panel's controls say: a method, one weight per source (in source order), the method's other
    parameters (applied to every model), and a seed for random methods."""

    method: str
    weights: list[float]
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    # The registry's declaration of `method`, resolved once when the settings are made and passed down with them
    # (the recipe built from them keeps it); not part of the settings' value (equality, to_dict).
    spec: Method = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.spec is None or self.spec.name != self.method:
            self.spec = get_method(self.method)  # an unknown name: RecipeError listing the methods

    @classmethod
    def from_dict(cls, raw: Any) -> MergeSettings:
        """Settings from JSON (the /merge endpoints, the page): every field's type, length and value checked
        before any work, each refusal naming the field."""
        if not isinstance(raw, dict):
            raise RecipeError(f"Merge settings must be a JSON object like {SETTINGS_EXAMPLE}, not "
                              f"{_kind(raw)}.")
        unknown = [str(k) for k in raw if k not in ("method", "weights", "params", "seed")]
        if unknown:
            raise RecipeError(f"Merge settings have unknown field(s) {_names(unknown)}: use method, weights, params "
                              f"and seed, like {SETTINGS_EXAMPLE}.")
        return cls.checked(_method(raw.get("method")), raw.get("weights"), raw.get("params"), raw.get("seed"))

    @classmethod
    def checked(cls, method: Method, weights: Any, params: Any, seed: Any) -> MergeSettings:
        """Settings of a method already looked up, the other fields checked as from_dict checks them (the page's
        controls: their method was resolved to read them)."""
        return cls(method=method.name, weights=_weights(weights), params=_params(method, params), seed=_seed(seed),
                   spec=method)

    @classmethod
    def from_controls(cls, method: str, weights: list[float], params: dict[str, Any], seed: float | None,
                      sources: int) -> MergeSettings:
        """The Merge tab's controls as settings, checked as from_dict checks JSON: the method's name (looked up
        here, once), every weight slider's value (the first `sources` taken; none when the method has no
        per-model weight), the method's parameters by name (None: a control not shown, left out) and the seed."""
        spec = get_method(method)
        n = sources if spec.weight is not None else 0
        kept = {name: value for name, value in params.items() if value is not None}
        return cls.checked(spec, [float(w) for w in weights[:n]], kept, int(seed or 0))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "weights": list(self.weights), "params": dict(self.params), "seed": self.seed}


SETTINGS_EXAMPLE = '{"method": "ties", "weights": [0.5, 0.5], "params": {"density": 0.5}, "seed": 0}'
MAX_SETTINGS_WEIGHTS = 64  # one per source model; the page offers 8
MAX_SETTINGS_PARAMS = 32  # more than any method declares
MAX_NAME_CHARS = 64  # a method or parameter name; longer ones are cut in messages
MAX_SEED = 2**63 - 1


def _kind(value: Any) -> str:
    """'a list', 'a string', 'null': what a JSON value is, for messages."""
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _names(names: list[str]) -> str:
    """Up to five names, each cut to MAX_NAME_CHARS, quoted: messages never repeat a huge input."""
    shown = ", ".join(repr(n if len(n) <= MAX_NAME_CHARS else n[:MAX_NAME_CHARS] + "…") for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _number(value: Any, field: str) -> float:
    """A finite JSON number (not a boolean, a string or null) for `field`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecipeError(f"{field} must be a number, not {_kind(value)}.")
    if isinstance(value, int) and abs(value) > MAX_SEED:
        raise RecipeError(f"{field} is too large: give a number between -{MAX_SEED} and {MAX_SEED}.")
    if not math.isfinite(value):
        raise RecipeError(f"{field} must be a finite number, not {value}.")
    return float(value)


def _method(value: Any) -> Method:
    if not isinstance(value, str) or not value.strip():
        raise RecipeError(f'method must be a merge method\'s name such as "ties", not {_kind(value)}.')
    if len(value) > MAX_NAME_CHARS:
        raise RecipeError(f"method {_names([value])} is not a merge method: use one of the Merge tab's methods.")
    return get_method(value.strip())  # an unknown name: RecipeError listing the methods


def _weights(value: Any) -> list[float]:
    """One finite number per source model; a string such as "11" is refused (it is not [1, 1])."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise RecipeError(f"weights must be a list of numbers, one per source model (like [0.5, 0.5]), not "
                          f"{_kind(value)}.")
    if len(value) > MAX_SETTINGS_WEIGHTS:
        raise RecipeError(f"weights has {len(value)} entries: give one per source model (at most "
                          f"{MAX_SETTINGS_WEIGHTS}).")
    return [_number(w, f"weights[{i}]") for i, w in enumerate(value)]


def _params(spec: Method, value: Any) -> dict[str, Any]:
    """The method's own parameters, each a number, string or boolean: unknown names and nulls are refused."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RecipeError(f'params must be an object of the method\'s parameters (like {{"density": 0.5}}), not '
                          f"{_kind(value)}.")
    known = [p.name for p in spec.params if p.role != "weight"]  # weights come as `weights`, one per source
    unknown = [str(k) for k in value if k not in known]
    if unknown or len(value) > MAX_SETTINGS_PARAMS:
        hint = " (per-model weights go in `weights`)" if "weight" in unknown else ""
        what = f"{_names(unknown)} {'is not a parameter' if len(unknown) == 1 else 'are not parameters'}" \
            if unknown else f"has {len(value)} entries, which"
        raise RecipeError(f"params {what} of {spec.name}{hint}: use {', '.join(known) or 'none'}.")
    params = {}
    for name, item in value.items():
        field = f"params.{name}"
        if item is None:
            raise RecipeError(f"{field} is null: give it a value, or leave {name} out to use its default "
                              f"({spec.param(name).default!r}).")
        if isinstance(item, str):
            if len(item) > MAX_NAME_CHARS:
                raise RecipeError(f"{field} is a {len(item)}-character string: give one of its values.")
        elif isinstance(item, int | float) and not isinstance(item, bool):
            _number(item, field)
        elif not isinstance(item, bool):
            raise RecipeError(f"{field} must be a number, a string or true/false, not {_kind(item)}.")
        params[name] = item
    return params


def _seed(value: Any) -> int:
    """A whole number (a float such as 3.0 from a number box too); null is 0."""
    if value is None:
        return 0
    number = _number(value, "seed")
    if number != int(number) or abs(number) > MAX_SEED:
        raise RecipeError(f"seed must be a whole number between -{MAX_SEED} and {MAX_SEED}, not {value}.")
    return int(number)
