"""Parameter declarations shared by several methods (mergekit's names and defaults; our bounds).

Bounds (see registry.Param): weights, λ and scales within ±MAGNITUDE (mergekit recipes use −1..2; a weight of 1e300
only overflows), fractions within [0, 1].
"""

from __future__ import annotations

from merging.methods.registry import Param

MAGNITUDE = 100.0  # |weight|, |λ|, |scale| at most this: far beyond any useful merge, far below float32 overflow


def weight(help: str = "How much of this model's task vector goes into the merge.",
           ui_range: tuple[float, float] = (-1.0, 2.0)) -> Param:
    """mergekit's per-model `weight`, declared here once: every method with a weight uses this (role "weight"), in
    its own words (`help`) and with its own useful slider range (`ui_range`: linear's shares 0..2, slerp-like
    interpolation 0..1)."""
    return Param(name="weight", scope="model", default=None, low=-MAGNITUDE, high=MAGNITUDE, kind="float", help=help,
                 required=True, ui_range=ui_range, role="weight")


WEIGHT = weight()
DENSITY = Param(name="density", scope="model", default=1.0, low=0.0, high=1.0, kind="float",
                help="Fraction of each task vector's entries kept (1 = all).", ui_start=0.5, role="kept_fraction")
GAMMA = Param(name="gamma", scope="model", default=0.01, low=0.0, high=1.0, kind="float",
              help="Fraction of the largest entries dropped as outliers.")
EPSILON = Param(
    name="epsilon", scope="model", default=0.15, low=0.0, high=1.0, kind="float",
    help="Spread of keep probabilities around the density: smallest entries density−ε, largest density+ε.",
)
LAMBDA = Param(name="lambda", scope="global", default=1.0, low=-MAGNITUDE, high=MAGNITUDE, kind="float",
               help="Scale of the merged task vector.", ui_range=(0.0, 2.0), role="scale")
INT8_MASK = Param(name="int8_mask", scope="global", default=False, kind="bool",
                  help="Accepted for mergekit compatibility; no effect.", role="hidden")


def normalize(default: bool) -> Param:
    return Param(
        name="normalize", scope="global", default=default, kind="bool",
        help="Divide the mixed task vector by the total weight of the models that contributed.",
    )


def rescale(default: bool) -> Param:
    return Param(
        name="rescale", scope="global", default=default, kind="choice",
        help="After random pruning scale kept entries up: true = match the L1 norm (mergekit), "
        "inverse_density = divide by the density (DARE paper), false = no rescale.",
        choices=(True, False, "inverse_density"), mergekit_values=(("inverse_density", True),),
    )
