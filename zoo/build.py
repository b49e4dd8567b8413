"""Builds the zoo: task files, then each family's base and experts, with one progress bar over all training steps.

Seeds are derived per model from the build seed and the model's name, so building one family (or rebuilding one
missing expert from a saved base) gives the same weights as a full build.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm
from transformers import BertForPreTraining, MistralForCausalLM
from transformers.utils import logging as hf_logging

from . import classifier, lm
from .classifier_tasks import classifier_split
from .families import (
    BASE_NAME,
    FAMILY_EXPERTS,
    REAL_FAMILY_BUILDERS,
    TASKS_DIR,
    ZOO_DIR,
    Family,
    Progress,
    is_family_built,
    real_family,
    real_family_module,
    tiny_families,
)
from .lm_tasks import lm_splits
from .tasksets import write_task_files
from .training import deterministic

FAMILY_NAMES = tuple(FAMILY_EXPERTS)


def model_seed(seed: int, family: str, model: str) -> int:
    return zlib.crc32(f"{seed}:{family}:{model}".encode())


def is_built(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


class _Steps:
    """Counts training steps into a tqdm bar, or into a caller's progress(fraction, description) callback."""

    def __init__(self, total: int, progress: Progress | None):
        self.total, self.done, self.progress, self.desc = max(1, total), 0, progress, ""
        self.bar = None if progress else tqdm(total=total, desc="zoo build", unit="step")

    def stage(self, desc: str) -> None:
        self.desc = desc
        if self.bar:
            self.bar.set_description(desc)
        else:
            self.progress(self.done / self.total, desc)

    def step(self, _step: int, loss: float) -> None:
        self.done += 1
        if self.bar:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        elif self.done % 10 == 0:
            self.progress(self.done / self.total, self.desc)

    def close(self) -> None:
        if self.bar:
            self.bar.close()


def _settings(family: str, reduced: bool):
    cls = lm.LMSettings if family == "lm" else classifier.ClassifierSettings
    return cls.reduced() if reduced else cls()


def _steps_needed(settings, todo: list[str]) -> int:
    def steps(model: str) -> int:
        if model == BASE_NAME:
            return settings.base_steps
        return settings.expert_steps[model] if isinstance(settings.expert_steps, dict) else settings.expert_steps
    return sum(steps(m) for m in todo)


def _build_lm(root: Path, todo: list[str], settings: lm.LMSettings, seed: int, steps: _Steps) -> None:
    tokenizer = lm.build_tokenizer()
    splits = lm_splits()
    _build_family(
        "lm", root, todo, seed, steps, base_stage="pretraining the base",
        train_base=lambda base_seed: lm.train_base(tokenizer, settings, base_seed, steps.step),
        load_base=lambda folder: MistralForCausalLM.from_pretrained(folder, dtype="float32"),
        train_expert=lambda base, expert, expert_seed: lm.train_expert(base, splits[expert], settings, expert_seed,
                                                                      tokenizer, steps.step),
        save=lambda model, folder: lm.save_lm(model, tokenizer, folder))


def _build_classifier(root: Path, todo: list[str], settings: classifier.ClassifierSettings, seed: int,
                      steps: _Steps) -> None:
    tokenizer = classifier.build_tokenizer()
    split = classifier_split()
    _build_family(
        "classifier", root, todo, seed, steps, base_stage="pretraining the base (masked LM)",
        train_base=lambda base_seed: classifier.train_base(tokenizer, settings, split, base_seed, steps.step),
        load_base=lambda folder: BertForPreTraining.from_pretrained(folder, dtype="float32"),
        train_expert=lambda base, expert, expert_seed: classifier.train_expert(base, tokenizer, expert, split,
                                                                              settings, expert_seed, steps.step),
        save=lambda model, folder: classifier.save_classifier(model, tokenizer, folder))


def _build_family(family: str, root: Path, todo: list[str], seed: int, steps: _Steps, *, base_stage: str,
                  train_base: Callable[[int], Any], load_base: Callable[[Path], Any],
                  train_expert: Callable[[Any, str, int], Any], save: Callable[[Any, Path], None]) -> None:
    """The base trained and saved when `todo` names it, else loaded from `root`; then each expert in `todo`
    fine-tuned from it and saved. Each model trains under the seed of its own name, so an expert rebuilt from a saved
    base gets the weights of a full build."""
    if BASE_NAME in todo:
        steps.stage(f"{family}: {base_stage}")
        base_seed = model_seed(seed, family, BASE_NAME)
        with deterministic(base_seed):
            base = train_base(base_seed)
        save(base, root / BASE_NAME)
    else:
        base = load_base(root / BASE_NAME)
    for expert in (m for m in todo if m != BASE_NAME):
        steps.stage(f"{family}: fine-tuning the {expert} expert")
        expert_seed = model_seed(seed, family, expert)
        with deterministic(expert_seed):
            model = train_expert(base, expert, expert_seed)
        save(model, root / expert)


def build(out: Path = ZOO_DIR, *, tasks_out: Path | None = None, reduced: bool = False,
          family: str = "all", seed: int = 0, only_missing: bool = False,
          progress: Progress | None = None) -> dict:
    """Builds (or, with only_missing, completes) the zoo under `out/<family>/<model>` and writes the task files to
    `tasks_out` (default: assets/tasks for the default `out`, else `out/tasks`). Returns a build record."""
    out = Path(out)
    tasks_out = Path(tasks_out) if tasks_out else (TASKS_DIR if out == ZOO_DIR else out / "tasks")
    chosen = FAMILY_NAMES if family == "all" else (family,)
    started = time.perf_counter()
    write_task_files(tasks_out)
    plan: dict[str, list[str]] = {}
    for name in chosen:
        models = [BASE_NAME, *FAMILY_EXPERTS[name]]
        if only_missing and is_built(out / name / BASE_NAME):  # without a base, the whole family is rebuilt
            models = [m for m in models if not is_built(out / name / m)]
        plan[name] = models
    total = sum(_steps_needed(_settings(n, reduced), todo) for n, todo in plan.items())
    steps = _Steps(total, progress)
    timings = {}
    hf_bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # transformers' per-save bars would break up the build's single bar
    try:
        for name, todo in plan.items():
            if not todo:
                continue
            t0 = time.perf_counter()
            builder = _build_lm if name == "lm" else _build_classifier
            builder(out / name, todo, _settings(name, reduced), seed, steps)
            timings[name] = round(time.perf_counter() - t0, 1)
    finally:
        steps.close()
        if hf_bars:
            hf_logging.enable_progress_bar()
    record = {"seed": seed, "reduced": reduced, "built": plan, "seconds": timings,
              "total_seconds": round(time.perf_counter() - started, 1)}
    if progress:
        progress(1.0, "zoo built")
    return record


def ensure_built(progress: Progress | None = None, *, zoo_dir: Path | None = None, tasks_dir: Path | None = None,
                 reduced: bool = False, seed: int = 0) -> dict[str, list[str]]:
    """Rebuilds whatever checkpoint or task file is missing (a missing base rebuilds its whole family; a missing
    expert is fine-tuned from the saved base, giving the same weights as a full build). `progress(fraction,
    description)` (e.g. a gr.Progress) replaces the tqdm bar. Returns what was built per family ({} when nothing
    was missing). The keyword arguments point it at another zoo (tests)."""
    zoo_dir = Path(zoo_dir) if zoo_dir else ZOO_DIR
    tasks_dir = Path(tasks_dir) if tasks_dir else TASKS_DIR
    built: dict[str, list[str]] = {}
    fams = tiny_families(zoo_dir, tasks_dir)  # real families are built on demand by zoo.ensure_family
    for name, fam in fams.items():
        if any(not is_built(p) for p in fam.models().values()):
            record = build(zoo_dir, tasks_out=tasks_dir, family=name, only_missing=True, reduced=reduced, seed=seed,
                           progress=progress)
            built.update(record["built"])
    if any(not f.tasks.is_file() or not f.unlabeled.is_file() for f in fams.values()):
        write_task_files(tasks_dir)
    return built


# One build at a time per family in this process: the app's start-up build and a visitor's page load (or two
# visitors) would otherwise write the same temporary folders at once.
_BUILD_LOCKS: dict[str, threading.Lock] = {name: threading.Lock() for name in REAL_FAMILY_BUILDERS}


def ensure_family(name: str, progress: Progress | None = None) -> Family:
    """The family `name`, built first if any of its folders or task files is missing (a tqdm bar, or
    `progress(fraction, description)`, e.g. a gr.Progress). Quick when it is already built; a caller that arrives
    while another thread builds it waits for that build."""
    if name in REAL_FAMILY_BUILDERS:
        family, module = real_family(name), real_family_module(name)
        current = getattr(module, "is_current", lambda root: True)  # e.g. the shipped adapters changed

        def ready() -> bool:
            return is_family_built(family) and current(family.root)

        if ready():
            return family
        with _BUILD_LOCKS[name]:
            if not ready():
                if progress is not None:
                    progress(0.0, f"Building the {name} family (first start only)…")
                module.build_family(family.root, progress=progress)
        return family
    fams = tiny_families()
    if name not in fams:
        known = ", ".join([*REAL_FAMILY_BUILDERS, *fams])
        raise KeyError(f"Unknown zoo family {name!r}: choose one of {known}.")
    if not is_family_built(fams[name]):
        ensure_built(progress)
    return fams[name]


__all__ = ["build", "ensure_built", "ensure_family", "is_built", "model_seed"]
