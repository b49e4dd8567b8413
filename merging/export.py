"""The recipe as a file for mergekit: what the Export tab offers as "mergekit YAML" and what the engine writes as
`mergekit_config.yml`. It must run in mergekit 0.1.5 as written (tests/test_mergekit_parity.py runs every method of
the registry through mergekit itself).

`Recipe.to_mergekit()` rewrites what mergekit spells differently (magnitude_prune is breadcrumbs with gamma 0) and
notes what it cannot express (`rescale: inverse_density`), as `# MergeLab:` comments on top. A method mergekit has
no equivalent for is not passed off as mergekit YAML: the export is then the MergeLab recipe, under its own file
name, with a comment saying mergekit cannot run it and how to run it with MergeLab.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MERGEKIT_FILE = "mergekit_config.yml"
MERGELAB_FILE = "mergelab_recipe.yaml"
# The merge methods mergekit 0.1.5 registers (mergekit.merge_methods.registry); the parity test checks this list
# against mergekit itself.
MERGEKIT_METHODS = frozenset({
    "arcee_fusion", "breadcrumbs", "breadcrumbs_ties", "dare_linear", "dare_ties", "della", "della_linear",
    "karcher", "linear", "model_stock", "multislerp", "nearswap", "nuslerp", "passthrough", "ram", "ramplus_tl",
    "sce", "slerp", "task_arithmetic", "ties",
})


@dataclass(frozen=True)
class RecipeExport:
    text: str  # the file's contents
    filename: str  # mergekit_config.yml when mergekit runs it, else mergelab_recipe.yaml
    runs_in_mergekit: bool
    reason: str | None = None  # why mergekit cannot run it (None when it can)


def mergekit_export(recipe: Any) -> RecipeExport:
    """The recipe as mergekit YAML when mergekit 0.1.5 can run it; otherwise the MergeLab recipe, saying why."""
    data, _notes = recipe.to_mergekit()
    method = data.get("merge_method")
    if method in MERGEKIT_METHODS:
        return RecipeExport(recipe.to_mergekit_yaml(), MERGEKIT_FILE, True)
    reason = f"mergekit 0.1.5 has no merge method {method!r}"
    header = (f"# {reason}: this is a MergeLab recipe, not mergekit YAML.\n"
              "# Run it with MergeLab: python -m merging run THIS_FILE OUT_DIR\n")
    return RecipeExport(header + recipe.to_yaml(), MERGELAB_FILE, False, reason)
