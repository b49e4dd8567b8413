"""The SmolLM2 family: SmolLM2-135M-Instruct and three LoRA fine-tunes of it (math, japanese, strings).

Nothing here trains at app start: the adapters ship in assets/zoo/smollm2/<expert>/ (made by
`python -m zoo train smollm2`, zoo/smollm2_train.py); `build_family` writes the base folder, materialises each
expert as base + its LoRA delta (bf16), and copies the task files. Heavy imports stay inside the functions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

KIND = "lm"
EXPERTS = ("math", "japanese", "strings")
TASKS = ("math", "japanese", "strings", "japanese_math")

Progress = Callable[[float, str], None]


def build_family(root: Path, progress: Progress | None = None) -> None:
    """Builds whatever of the family is missing under `root` (idempotent)."""
    raise NotImplementedError("the smollm2 family builder is being written")


def train(out: Path | None = None) -> None:
    """Re-trains the shipped adapters (deterministic; minutes of CPU per expert)."""
    raise NotImplementedError("the smollm2 training script is being written")
