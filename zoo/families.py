"""Where the zoo lives and what it holds: the `Family` records other packages code against."""

from __future__ import annotations

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


@dataclass(frozen=True)
class Family:
    """One model family: a base, its experts (base + fine-tuning each) and the task files that score them."""

    name: str
    kind: Literal["lm", "classifier"]
    base: Path
    experts: dict[str, Path] = field(default_factory=dict)
    tasks: Path = Path()
    unlabeled: Path = Path()

    def models(self) -> dict[str, Path]:
        """Base first, then the experts: every checkpoint folder of the family by model name."""
        return {BASE_NAME: self.base, **self.experts}


def families(zoo_dir: Path | None = None, tasks_dir: Path | None = None) -> dict[str, Family]:
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
