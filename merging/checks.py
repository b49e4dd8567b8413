"""What a merge's checks say, and its output folder's checks. The per-tensor step (merging.step) that the engine
(folder) and LiveMerger (in memory) share refuses a merged tensor holding NaN or inf (a weight of 1e308, weights
summing to 0 with normalize on, ...) and a method's failure; the errors here word either, naming the tensor and the
likely cause, so a merge is refused before anything that looks finished is written.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from merging.errors import MergeLabError
from merging.methods.registry import get_method

HUGE_SETTING = 1e4  # weights, lambdas and scales beyond this are named as the likely cause of an overflow
NORMALIZING_PARAMS = ("normalize", "normalize_weights")


class NonFiniteMergeError(MergeLabError):
    """A merged tensor has NaN or inf values (or values the output dtype cannot hold)."""


def non_finite_result(tensor_name: str, tensor: torch.Tensor, recipe: Any,
                      out_dtype: torch.dtype | None = None) -> NonFiniteMergeError:
    """The error for a merged tensor the step found unfit to write (merging.step: NaN/inf values, or values beyond
    what `out_dtype` holds): which it is, and the recipe setting most likely to blame."""
    low, high = (float(v) for v in torch.aminmax(tensor.detach()))
    if math.isfinite(low) and math.isfinite(high):
        limit = torch.finfo(out_dtype).max if out_dtype is not None and out_dtype.is_floating_point else math.inf
        return NonFiniteMergeError(
            f"The merge was refused: tensor {tensor_name!r} has values up to {max(-low, high):.3g}, beyond what "
            f"{str(out_dtype).removeprefix('torch.')} holds (±{limit:.5g}), so the saved model would hold inf. "
            f"{_likely_cause(recipe)} Or set out_dtype: float32 (or bfloat16). Nothing was written.")
    nan = int(torch.isnan(tensor).sum())
    inf = tensor.numel() - nan - int(torch.isfinite(tensor).sum())
    counts = ", ".join(f"{n} {what}" for n, what in ((nan, "NaN"), (inf, "inf")) if n)
    return NonFiniteMergeError(
        f"The merge was refused: tensor {tensor_name!r} came out with non-finite values ({counts} of "
        f"{tensor.numel()}). {_likely_cause(recipe)} Nothing was written.")


def method_failure(tensor_name: str, method_name: str, error: Exception, recipe: Any) -> MergeLabError:
    """A method that failed on the recipe's values (a weight of 1e308 does not fit float32, ...), as a message."""
    detail = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
    return MergeLabError(f"Merging tensor {tensor_name!r} with {method_name} failed ({detail}). "
                         f"{_likely_cause(recipe)} Nothing was written.")


def _likely_cause(recipe: Any) -> str:
    """The recipe setting most likely to blame, in words a user can act on."""
    scaling = _scaling_params(recipe)
    huge = [(where, key, value) for where, key, value in _numeric_settings(recipe)
            if key in scaling and abs(value) >= HUGE_SETTING]
    if huge:
        where, key, value = max(huge, key=lambda item: abs(item[2]))
        return (f"Likely cause: `{key}: {value:g}` ({where}) is huge and overflows float32 (largest about 3.4e38); "
                "use weights and lambda of order 1.")
    normalizer = _active_normalizer(recipe)
    weights = [value for where, key, value in _numeric_settings(recipe) if key == "weight" and where != "top level"]
    if normalizer and weights and abs(sum(weights)) <= 1e-12 * max(abs(w) for w in weights):
        return (f"Likely cause: the models' weights ({', '.join(f'{w:g}' for w in weights)}) sum to 0 and "
                f"`{normalizer}` divides by their sum; change a weight, or set `{normalizer}: false`.")
    return ("Likely causes: NaN/inf values in an input model, or weights, lambda or normalize settings that push "
            "values out of range; check the models and the recipe's parameters.")


def _scaling_params(recipe: Any) -> set[str]:
    """The method's parameters that multiply the result (declared roles "weight" and "scale": weight, λ, scale)."""
    try:
        method = get_method(recipe.merge_method)
    except (MergeLabError, AttributeError):
        return set()
    return {p.name for p in method.params if p.role in ("weight", "scale")}


def _active_normalizer(recipe: Any) -> str | None:
    """The method's normalizing parameter when it is on (as set, else its default)."""
    try:
        method = get_method(recipe.merge_method)
    except (MergeLabError, AttributeError):
        return None
    for name in NORMALIZING_PARAMS:
        param = method.param(name)
        if param is not None:
            value = (getattr(recipe, "parameters", None) or {}).get(name, param.default)
            return name if value is True or str(value).lower() == "true" else None
    return None


def _numeric_settings(recipe: Any) -> Iterator[tuple[str, str, float]]:
    """(where, parameter name, value) for every number written in the recipe's parameters (gradients and filters
    included)."""
    scopes = [("top level", getattr(recipe, "parameters", None) or {})]
    scopes += [(f"model {entry.model!r}", entry.parameters or {}) for entry in getattr(recipe, "models", [])]
    for where, settings in scopes:
        if not isinstance(settings, dict):
            continue
        for key, setting in settings.items():
            for value in _leaves(setting):
                yield where, str(key), value


def _leaves(setting: Any, depth: int = 0) -> Iterator[float]:
    if depth > 4:  # recipes nest at most a list of {filter, value} holding a gradient list
        return
    if isinstance(setting, bool):
        return
    if isinstance(setting, (int, float)):
        value = float(setting) if abs(setting) < 1e308 or isinstance(setting, float) else math.inf
        if not math.isnan(value):
            yield value
    elif isinstance(setting, str):
        try:
            value = float(setting)
        except ValueError:
            return
        if not math.isnan(value):
            yield value
    elif isinstance(setting, dict):
        yield from _leaves(setting.get("value"), depth + 1)
    elif isinstance(setting, (list, tuple)):
        for item in setting:
            yield from _leaves(item, depth + 1)


# --- the output folder ------------------------------------------------------------------------------------------

# The merge is built in a hidden sibling `.NAME.incomplete-<pid>` (up to 20 bytes more than NAME), and file systems
# allow 255 bytes per name.
MAX_OUTPUT_NAME_BYTES = 200


class OutputFolderError(MergeLabError):
    """The output folder cannot be used (exists and is not empty, is a file, cannot be written, disk full)."""


def output_folder_problem(out: Path, *, overwrite: bool) -> str | None:
    """What stops a merge from being written to `out` (a message saying what to fix), or None."""
    if not out.name or out.name in (".", ".."):
        return f"{out} is not a folder name; give a path ending in the new folder's name, e.g. models/my-merge."
    if len(out.name.encode("utf-8", "surrogateescape")) > MAX_OUTPUT_NAME_BYTES:
        return (f"The output folder name is {len(out.name.encode('utf-8', 'surrogateescape'))} bytes long; file "
                f"systems allow 255 and the merge needs room for a temporary name: use at most "
                f"{MAX_OUTPUT_NAME_BYTES} bytes.")
    try:
        if out.exists() and not out.is_dir():
            return f"{out} is a file; give a folder path for the merged model."
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            return (f"{out} already exists and is not empty. Choose a new folder, or pass --overwrite "
                    "(overwrite=True) to replace it once the new merge is complete.")
        ancestor = existing_ancestor(out.parent)
    except OSError as exc:
        return f"{out} cannot be used as the output folder ({exc.strerror or exc}); choose another folder."
    if not ancestor.is_dir():
        return (f"{ancestor} is a file, so {out} cannot be created inside it; choose an output folder whose parent "
                "is a folder.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"No permission to write in {ancestor}; choose an output folder you can write to."
    return None


def existing_ancestor(path: Path) -> Path:
    """`path` itself if it exists, else its nearest existing parent."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


_WRITE_FIXES = {
    errno.ENOSPC: "the disk is full: free space there, or choose an output folder on another disk",
    errno.EDQUOT: "the disk quota is used up: free space, or choose an output folder on another disk",
    errno.EACCES: "no permission to write there: choose an output folder you can write to",
    errno.EPERM: "no permission to write there: choose an output folder you can write to",
    errno.EROFS: "the file system is read-only: choose an output folder on a writable disk",
    errno.ENOTDIR: "a file stands where a folder is needed: choose another output folder",
    errno.EEXIST: "a file stands where a folder is needed: choose another output folder",
    errno.ENAMETOOLONG: "a name is too long for the file system: choose a shorter output folder name",
}


def output_write_error(error: OSError, out: Path) -> OutputFolderError:
    """An OSError met while writing the merge into `out`, as a message naming the file and what to fix."""
    where = error.filename or out
    if error.filename and not _writing_side(Path(str(error.filename)).absolute(), out):
        return OutputFolderError(f"Reading {_short(where)} failed ({error.strerror or error}) while merging into "
                                 f"{out}: check that model's files and its disk. Nothing was written.")
    fix = _WRITE_FIXES.get(error.errno or 0, "check the output folder and the disk")
    return OutputFolderError(f"Writing the merged model to {out} failed at {_short(where)} "
                             f"({error.strerror or error}): {fix}. Nothing was written.")


def _writing_side(path: Path, out: Path) -> bool:
    """Whether `path` is one the merge writes: `out`, a folder on the way to it, or inside its temporary folder."""
    temp_prefix = f".{out.name}.incomplete-"
    return (path == out or out.is_relative_to(path) or path.is_relative_to(out)
            or any(part.startswith(temp_prefix) for part in path.parts))


def _short(value: Any, limit: int = 300) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
