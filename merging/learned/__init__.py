"""Learned merging coefficients: AdaMerging (entropy) and SAMerging (multi-teacher KL with a real SAM step).

`learn_merge(...)` runs either method on Hugging Face folders; `learn(...)` is the model-agnostic loop over
`TaskVectors` and a loss function; `save_learned_merge(...)` writes a task_arithmetic recipe with per-tensor weights.
"""

from merging.learned.api import METHODS, LearnedMerge, default_config, learn_merge, make_loss, save_learned_merge
from merging.learned.coefficients import TaskVectors, shared_tensor_names
from merging.learned.recipe_io import load_coefficients, recipe_dict, save_learned
from merging.learned.trainer import LearnResult, OptimConfig, learn

__all__ = [
    "METHODS",
    "LearnResult",
    "LearnedMerge",
    "OptimConfig",
    "TaskVectors",
    "default_config",
    "learn",
    "learn_merge",
    "load_coefficients",
    "make_loss",
    "recipe_dict",
    "save_learned",
    "save_learned_merge",
    "shared_tensor_names",
]
