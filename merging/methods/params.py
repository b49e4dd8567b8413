"""Parameter declarations shared by several methods (mergekit's names, ranges and defaults)."""

from __future__ import annotations

from merging.methods.registry import Param

WEIGHT = Param(
    "weight", "model", None, None, None, "float", "How much of this model's task vector goes into the merge.",
    required=True, ui_range=(-1.0, 2.0),
)
DENSITY = Param("density", "model", 1.0, 0.0, 1.0, "float", "Fraction of each task vector's entries kept (1 = all).")
GAMMA = Param("gamma", "model", 0.01, 0.0, 1.0, "float", "Fraction of the largest entries dropped as outliers.")
EPSILON = Param(
    "epsilon", "model", 0.15, 0.0, 1.0, "float",
    "Spread of keep probabilities around the density: smallest entries density−ε, largest density+ε.",
)
LAMBDA = Param("lambda", "global", 1.0, None, None, "float", "Scale of the merged task vector.", ui_range=(0.0, 2.0))
INT8_MASK = Param("int8_mask", "global", False, None, None, "bool", "Accepted for mergekit compatibility; no effect.")


def normalize(default: bool) -> Param:
    return Param(
        "normalize", "global", default, None, None, "bool",
        "Divide the mixed task vector by the total weight of the models that contributed.",
    )


def rescale(default: bool) -> Param:
    return Param(
        "rescale", "global", default, None, None, "choice",
        "After random pruning scale kept entries up: true = match the L1 norm (mergekit), "
        "inverse_density = divide by the density (DARE paper), false = no rescale.",
        choices=(True, False, "inverse_density"),
    )
