"""Where the zoo lives and what it holds: the `Family` records other packages code against."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS = REPO_ROOT / "assets"
ZOO_DIR = ASSETS / "zoo"
TASKS_DIR = ASSETS / "tasks"

LM_EXPERTS = ("math", "japanese", "strings")
LM_TASKS = ("math", "japanese", "strings", "japanese_math")
CLASSIFIER_EXPERTS = ("sentiment", "topic", "question", "negation")
FAMILY_EXPERTS = {"lm": LM_EXPERTS, "classifier": CLASSIFIER_EXPERTS}
BASE_NAME = "base"

# Real families (pretrained models from the package registries, fine-tuned by the project's own script) are too big to
# ship: each is built on demand into REAL_ZOO_DIR/<name> by the module named here, which provides
# `EXPERTS` (tuple of expert names) and `build_family(root: Path, progress=None) -> None` (idempotent).
REAL_ZOO_ENV = "MERGELAB_ZOO_DIR"
REAL_FAMILY_BUILDERS: dict[str, str] = {"smollm2": "zoo.smollm2", "minilm": "zoo.minilm"}
REAL_TASKS_FILE, REAL_UNLABELED_FILE = "tasks.jsonl", "unlabeled.jsonl"

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class Family:
    """One model family: a base, its experts (base + fine-tuning each) and the task files that score them."""

    name: str
    kind: Literal["lm", "classifier"]
    base: Path
    experts: dict[str, Path] = field(default_factory=dict)
    tasks: Path = Path()
    unlabeled: Path = Path()
    root: Path | None = None  # a real family's folder (built on demand); None for the shipped tiny families

    def models(self) -> dict[str, Path]:
        """Base first, then the experts: every checkpoint folder of the family by model name."""
        return {BASE_NAME: self.base, **self.experts}


def real_zoo_dir() -> Path:
    """Where real families are built: $MERGELAB_ZOO_DIR, else models/zoo under the repository (git-ignored)."""
    override = os.environ.get(REAL_ZOO_ENV, "").strip()
    return Path(override).expanduser() if override else REPO_ROOT / "models" / "zoo"


def real_family_module(name: str):
    """The builder module of a real family (imported on first use)."""
    if name not in REAL_FAMILY_BUILDERS:
        raise KeyError(f"Unknown real zoo family {name!r}: choose one of {', '.join(REAL_FAMILY_BUILDERS)}.")
    return importlib.import_module(REAL_FAMILY_BUILDERS[name])


def real_family(name: str, root: Path | None = None) -> Family:
    """The Family record of a real family, whose folders are `root` (default real_zoo_dir()/name)/{base,<expert>}."""
    root = Path(root) if root else real_zoo_dir() / name
    module = real_family_module(name)
    return Family(name=name, kind=getattr(module, "KIND", "lm"), base=root / BASE_NAME,
                  experts={e: root / e for e in module.EXPERTS}, tasks=root / REAL_TASKS_FILE,
                  unlabeled=root / REAL_UNLABELED_FILE, root=root)


def tiny_families(zoo_dir: Path | None = None, tasks_dir: Path | None = None) -> dict[str, Family]:
    """The two shipped families. Paths are returned whether or not the checkpoints exist (see `ensure_built`)."""
    zoo_dir = Path(zoo_dir) if zoo_dir else ZOO_DIR
    tasks_dir = Path(tasks_dir) if tasks_dir else TASKS_DIR
    result = {}
    for name, experts in FAMILY_EXPERTS.items():
        result[name] = Family(
            name=name,
            kind=name,  # the family names are the kinds: "lm" and "classifier"
            base=zoo_dir / name / BASE_NAME,
            experts={e: zoo_dir / name / e for e in experts},
            tasks=tasks_dir / f"zoo_{name}.jsonl",
            unlabeled=tasks_dir / f"zoo_{name}_unlabeled.jsonl",
        )
    return result


def families(zoo_dir: Path | None = None, tasks_dir: Path | None = None, *, real: bool = True) -> dict[str, Family]:
    """Every family: the real ones first (the app's default), then the shipped tiny ones; `real=False` gives the tiny
    ones only. Paths are returned whether or not the folders exist (see `ensure_family`)."""
    result = {name: real_family(name) for name in REAL_FAMILY_BUILDERS} if real else {}
    result.update(tiny_families(zoo_dir, tasks_dir))
    return result


def is_family_built(family: Family) -> bool:
    """Every model folder has its config and weights, and the task files are there."""
    def built(folder: Path) -> bool:
        return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))
    return all(built(f) for f in family.models().values()) and family.tasks.is_file() and family.unlabeled.is_file()
