"""The recipe as a file for mergekit: what the Export tab offers as "mergekit YAML" and what the engine writes as
`mergekit_config.yml`. It must run in mergekit 0.1.5 as written (tests/test_mergekit_parity.py runs every method of
the registry through mergekit itself).

Each method declares how mergekit runs it (`Method.mergekit`, merging/methods/registry.py; the parity test checks
every declared name against mergekit's own registry). `Recipe.to_mergekit()` rewrites what mergekit spells
differently (magnitude_prune is breadcrumbs with gamma 0) and notes what it cannot express (`rescale:
inverse_density`), as `# MergeLab:` comments on top. A method declared without a mergekit equivalent is not passed
off as mergekit YAML: the export is then the MergeLab recipe, under its own file name, with a comment saying mergekit
cannot run it and how to run it with MergeLab.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from merging.methods.registry import get_method

MERGEKIT_FILE = "mergekit_config.yml"
MERGELAB_FILE = "mergelab_recipe.yaml"


@dataclass(frozen=True)
class RecipeExport:
    text: str  # the file's contents
    filename: str  # mergekit_config.yml when mergekit runs it, else mergelab_recipe.yaml
    runs_in_mergekit: bool
    reason: str | None = None  # why mergekit cannot run it (None when it can)


def mergekit_export(recipe: Any) -> RecipeExport:
    """The recipe as mergekit YAML when mergekit 0.1.5 can run it; otherwise the MergeLab recipe, saying why."""
    method = recipe.merge_method
    if get_method(method).mergekit is not None:
        return RecipeExport(recipe.to_mergekit_yaml(), MERGEKIT_FILE, True)
    reason = f"mergekit 0.1.5 has no merge method {method!r}"
    header = (f"# {reason}: this is a MergeLab recipe, not mergekit YAML.\n"
              "# Run it with MergeLab: python -m merging run THIS_FILE OUT_DIR\n")
    return RecipeExport(header + recipe.to_yaml(), MERGELAB_FILE, False, reason)
