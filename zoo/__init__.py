"""The offline model zoo: two small families (a chat LM and BERT classifiers) with their task sets.

    zoo.families() -> {"lm": Family, "classifier": Family}
    zoo.ensure_built(progress=None)   # rebuilds missing checkpoints (tqdm bar, or progress(fraction, desc))
    python -m zoo build [--reduced] [--out DIR] [--family lm|classifier|all] [--seed N]
"""

from .build import build, ensure_built
from .families import CLASSIFIER_EXPERTS, LM_EXPERTS, LM_TASKS, Family, families

__all__ = ["CLASSIFIER_EXPERTS", "LM_EXPERTS", "LM_TASKS", "Family", "build", "ensure_built", "families"]
