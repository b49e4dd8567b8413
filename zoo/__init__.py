"""The offline model zoo: two small shipped families (a chat LM and BERT classifiers) with their task sets, and real
families (pretrained models from the package registries + the project's own fine-tunes) built on demand.

    zoo.families() -> {"smollm2": Family, ..., "lm": Family, "classifier": Family}
    zoo.ensure_family(name, progress=None) -> Family   # builds a missing family first (any kind)
    zoo.ensure_built(progress=None)   # rebuilds missing checkpoints of the tiny families
    python -m zoo build [FAMILY] [--reduced] [--out DIR] [--family lm|classifier|all] [--seed N]
    python -m zoo train smollm2       # re-trains the shipped LoRA adapters (minutes of CPU; not run at app start)
"""

from .build import build, ensure_built, ensure_family
from .families import (
    CLASSIFIER_EXPERTS,
    LM_EXPERTS,
    LM_TASKS,
    REAL_FAMILY_BUILDERS,
    Family,
    families,
    real_zoo_dir,
    tiny_families,
)

__all__ = ["CLASSIFIER_EXPERTS", "LM_EXPERTS", "LM_TASKS", "REAL_FAMILY_BUILDERS", "Family", "build", "ensure_built",
           "ensure_family", "families", "real_zoo_dir", "tiny_families"]
