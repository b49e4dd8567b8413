"""One per-tensor merge step, the only place a merge method is called on real tensors: the streaming engine
(merging/engine.py), live merging (merging/live.py) and the tests that compare them all merge a tensor through
`MergeStep`, so they cannot drift apart.

A step is prepared once per merge: the recipe validated and read (its method, its inputs, whether the base is
passed) and, for the tensors named up front, each tensor's parameters resolved (gradients and filters applied,
defaults filled). Per tensor it then takes those parameters, draws the tensor's own random generator for random
methods (seeded from `zlib.crc32(f"{seed}:{name}")`, so results do not depend on tensor order), checks that the
method gets one parameter set per input, calls the method generically (`method.fn(base, tensors, model_params,
params, generator)`: any registered method, new ones included) collecting its notes, and refuses a result holding
NaN/inf or values the output dtype cannot hold; a refusal or a kernel failure is worded by merging.checks, naming the
tensor and the likely cause.

The step neither reads nor writes tensors and does not cast its result: its callers decide where the inputs come
from (a safetensors reader, tensors kept in memory) and where the result goes (a shard, a model's parameters).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from merging.checks import method_failure, non_finite_result
from merging.errors import MergeLabError
from merging.methods.common import tensor_generator
from merging.methods.notes import collected
from merging.methods.registry import Method
from merging.recipe import ParameterResolver


@dataclass
class MergeStep:
    """Merges single tensors for one recipe: build once per merge (RecipeError for an invalid recipe), call once per
    tensor.

    `num_layers` places a tensor within the model for gradients; `seed` and `device` make each random method's
    per-tensor generator. `names`: the tensors the merge will merge, their parameters resolved here, up front (other
    names are resolved when merged). `inputs` are the models passed as `tensors`, in order
    (`recipe.merge_inputs()`); `uses_base` says whether `base` is passed (`recipe.uses_base()`: the method does not
    ignore the base and the recipe names one). `notes` collects the methods' per-tensor messages (name → messages,
    in order)."""

    recipe: Any
    num_layers: int
    seed: int = 0
    device: str | torch.device = "cpu"
    names: Iterable[str] = ()
    method: Method = field(init=False)
    inputs: list[str] = field(init=False)
    uses_base: bool = field(init=False)
    notes: dict[str, list[str]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        # the recipe validated (free when it was before) and read once, its method with it, `names` resolved
        self._resolve = ParameterResolver(self.recipe, self.num_layers, names=self.names)
        self.method, self.inputs, self.uses_base = self._resolve.method, self._resolve.inputs, self._resolve.uses_base

    def parameters(self, name: str) -> tuple[list[dict], dict]:
        """(one dict per merge input, the global dict) resolved for tensor `name`."""
        return self._resolve.resolved.get(name) or self._resolve(name)

    def generator(self, name: str) -> torch.Generator | None:
        """The tensor's own generator for a random method (None for a deterministic one)."""
        return tensor_generator(self.seed, name, self.device) if self.method.random else None

    def __call__(self, name: str, base: torch.Tensor | None, tensors: list[torch.Tensor],
                 out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """The merged tensor `name` (the method's compute dtype, float32 unless the recipe's dtype says otherwise),
        checked to be finite and to fit `out_dtype`. MergeLabError for a failure the recipe can cause."""
        model_params, params = self.parameters(name)
        if len(tensors) != len(model_params):  # `zip` in a method would drop a model silently
            raise MergeLabError(
                f"Internal inconsistency merging {name!r} with {self.method.name}: {len(tensors)} input tensors but "
                f"{len(model_params)} parameter sets. The models read and the recipe's merge inputs disagree; please "
                "report this with the recipe.")
        generator = self.generator(name)
        try:
            merged, tensor_notes = collected(self.method.fn, base, tensors, model_params, params, generator)
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, ArithmeticError, ValueError) as exc:  # e.g. a weight beyond float32
            raise method_failure(name, self.method.name, exc, self.recipe) from exc
        if tensor_notes:
            self.notes[name] = tensor_notes
        if not _fits(merged, out_dtype):
            raise non_finite_result(name, merged, self.recipe, out_dtype)
        return merged

    def note_lines(self) -> list[str]:
        """The notes as "tensor: message" lines, in merge order."""
        return [f"{name}: {message}" for name, messages in self.notes.items() for message in messages]

    def distinct_notes(self) -> list[str]:
        """Each message once, in the order first seen (the engine's merge report)."""
        return list(dict.fromkeys(message for messages in self.notes.values() for message in messages))


def _fits(tensor: torch.Tensor, out_dtype: torch.dtype | None) -> bool:
    """Whether a merged tensor can be written: no NaN/inf and no value beyond what `out_dtype` holds. One min/max
    pass (NaN propagates through both), so it costs a fraction of the merge itself."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    low, high = (float(v) for v in torch.aminmax(tensor.detach()))
    limit = torch.finfo(out_dtype).max if out_dtype is not None and out_dtype.is_floating_point else math.inf
    return math.isfinite(low) and math.isfinite(high) and max(-low, high) <= limit
