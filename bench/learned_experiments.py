"""The experiments behind docs/learned-merging.md: on both zoo families, same data and settings, average per-task
agreement with each task's own expert for task arithmetic (best λ of a grid), TIES (best density), layer-wise
AdaMerging and SAMerging (true SAM, and the research code's "repo" mode), plus ablations over examples per task and ρ.

    .venv/bin/python bench/learned_experiments.py main [--steps 300] [--examples 16] [--family lm|classifier|all]
    .venv/bin/python bench/learned_experiments.py ablate [--steps 300] [--family ...]
    .venv/bin/python bench/learned_experiments.py variants [--steps 300] [--family ...]   # lr 1e-2, init 0, task-wise

Every merge goes through the product's own path: learned coefficients → task_arithmetic recipe → LiveMerger →
evaluation.Evaluator.score_state. The data-free baselines pick their best grid point on the scored task set itself
(an oracle choice that favours them). Prints markdown rows; --json writes every score.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zoo
from evaluation.agreement import Evaluator
from evaluation.tasks import load_tasks
from inference.loading import load_model
from merging.learned.adapters import read_state
from merging.learned.api import learn_merge
from merging.learned.recipe_io import recipe_dict
from merging.live import LiveMerger
from merging.recipe import Recipe

TA_GRID = (0.3, 0.5, 0.7, 1.0)
TIES_DENSITIES = (0.2, 0.5, 0.8)
BASE = "base"


class FamilyBench:
    """One zoo family loaded once: experts, evaluator (expert outputs cached), LiveMerger, unlabeled inputs."""

    def __init__(self, family: zoo.Family, offset: int = 0) -> None:
        self.family = family
        self.offset = offset  # skip this many unlabeled inputs per expert (a second draw of the data)
        self.experts = {name: load_model(path, dtype="float32") for name, path in family.experts.items()}
        self.evaluator = Evaluator(load_tasks(family.tasks), self.experts)
        self.evaluator.expert_predictions()
        base = read_state(family.base)
        states = {name: read_state(path) for name, path in family.experts.items()}
        num_layers = self.experts[next(iter(self.experts))].model.config.num_hidden_layers
        self.merger = LiveMerger(base, states, num_layers=num_layers)
        self.unlabeled = [json.loads(line) for line in family.unlabeled.read_text(encoding="utf-8").splitlines()]

    def inputs(self, per_task: int) -> dict[str, list[str]]:
        """The first `per_task` unlabeled inputs of each expert (all it has where it has fewer)."""
        out: dict[str, list[str]] = {e: [] for e in self.family.experts}
        seen: dict[str, int] = dict.fromkeys(self.family.experts, 0)
        for row in self.unlabeled:
            expert = row.get("expert")
            if expert in out:
                seen[expert] += 1
                if seen[expert] > self.offset and len(out[expert]) < per_task:
                    out[expert].append(row.get("prompt", row.get("text")))
        return out

    def short_of(self, per_task: int) -> str:
        counts = {e: sum(r.get("expert") == e for r in self.unlabeled) for e in self.family.experts}
        short = {e: c for e, c in counts.items() if c < per_task}
        return "" if not short else " (" + ", ".join(f"{e}: all {c}" for e, c in short.items()) + ")"

    def score(self, recipe: dict) -> dict:
        state = self.merger.merge(Recipe.from_dict(recipe))
        result = self.evaluator.score_state(state)
        return {"agreement": result.mean("agreement"),
                "tasks": {t: s.agreement for t, s in result.scores.items() if s.agreement is not None},
                "composite_accuracy": {t: s.accuracy for t, s in result.scores.items() if s.expert is None}}

    def task_arithmetic(self, weight: float) -> dict:
        return self.score({"merge_method": "task_arithmetic", "base_model": BASE,
                           "models": [{"model": e, "parameters": {"weight": weight}} for e in self.family.experts]})

    def ties(self, density: float) -> dict:
        return self.score({"merge_method": "ties", "base_model": BASE,
                           "models": [{"model": e, "parameters": {"weight": 1.0, "density": density}}
                                      for e in self.family.experts]})

    def learned(self, method: str, per_task: int, steps: int, **kwargs) -> dict:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        merge = learn_merge(method, self.family.base, self.family.experts, self.inputs(per_task), steps=steps,
                            **kwargs)
        total = time.perf_counter() - t0
        recipe = recipe_dict(BASE, list(self.family.experts), merge.names, merge.coefficients)
        scores = self.score(recipe)
        lam = merge.coefficients
        scores.update(seconds=round(total, 1), learn_seconds=round(merge.seconds, 1),
                      loss_first=merge.losses[0], loss_last=merge.losses[-1],
                      lambda_mean=[round(float(x), 3) for x in lam.mean(dim=-1)] if lam.dim() == 2 else lam.tolist(),
                      lambda_range=[round(float(lam.min()), 3), round(float(lam.max()), 3)])
        return scores


def fmt(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def row(family: str, label: str, scores: dict, extra: str = "") -> str:
    tasks = " · ".join(f"{t} {fmt(v)}" for t, v in scores["tasks"].items())
    line = f"| {family} | {label} | **{fmt(scores['agreement'])}** | {tasks} | {extra} |"
    print(line, flush=True)
    return line


def run_main(bench: FamilyBench, steps: int, examples: int, results: dict, baselines: bool = True) -> None:
    name = bench.family.name
    if not baselines:  # data-free merges do not depend on the unlabeled draw
        results[name] = {"learned": run_learned(bench, steps, examples)}
        return
    base = bench.task_arithmetic(0.0)
    row(name, "base (no task vectors)", base)
    ta = {w: bench.task_arithmetic(w) for w in TA_GRID}
    best_w = max(ta, key=lambda w: ta[w]["agreement"])
    row(name, f"task arithmetic, best λ={best_w}", ta[best_w],
        "grid " + ", ".join(f"{w}: {fmt(s['agreement'])}" for w, s in ta.items()))
    ties = {d: bench.ties(d) for d in TIES_DENSITIES}
    best_d = max(ties, key=lambda d: ties[d]["agreement"])
    row(name, f"TIES, best density={best_d}", ties[best_d],
        "grid " + ", ".join(f"{d}: {fmt(s['agreement'])}" for d, s in ties.items()))
    results[name] = {"base": base, "task_arithmetic": ta, "ties": ties, "learned": run_learned(bench, steps, examples),
                     "steps": steps, "examples": examples}


def run_learned(bench: FamilyBench, steps: int, examples: int) -> dict:
    learned = {}
    for label, method, kwargs in [("AdaMerging (layer-wise)", "adamerging", {}),
                                  ("SAMerging (ASAM ρ=0.07, true)", "samerging", {}),
                                  ("SAMerging, repo mode (= Adam on KL)", "samerging", {"sam_mode": "repo"})]:
        s = bench.learned(method, examples, steps, **kwargs)
        learned[label] = s
        row(bench.family.name, label, s, f"{s['learn_seconds']} s; loss {s['loss_first']:.3f}→{s['loss_last']:.3f}; "
                                         f"mean λ per task {s['lambda_mean']}")
    return learned


def run_ablations(bench: FamilyBench, steps: int, results: dict) -> None:
    name = bench.family.name
    out = {"examples": {}, "rho": {}}
    for n in (16, 64, 256):
        s = bench.learned("samerging", n, steps)
        out["examples"][n] = s
        row(name, f"SAMerging, {n} examples/task{bench.short_of(n)}", s, f"{s['learn_seconds']} s")
    for rho in (0.0, 0.02, 0.07, 0.2):
        s = bench.learned("samerging", 16, steps, rho=rho)
        out["rho"][rho] = s
        row(name, f"SAMerging, ρ={rho}", s, f"{s['learn_seconds']} s")
    results[name] = out


def run_variants(bench: FamilyBench, steps: int, examples: int, results: dict) -> None:
    """Settings off the papers' defaults: a 10x learning rate, the SAMerging code's init 0, task-wise λ."""
    name = bench.family.name
    out = {}
    for label, method, kwargs in [("AdaMerging, lr 1e-2", "adamerging", {"lr": 1e-2}),
                                  ("SAMerging, lr 1e-2", "samerging", {"lr": 1e-2}),
                                  ("SAMerging, lr 1e-2, repo mode", "samerging", {"lr": 1e-2, "sam_mode": "repo"}),
                                  ("SAMerging, init 0.0", "samerging", {"init": 0.0}),
                                  ("SAMerging, task-wise λ", "samerging", {"granularity": "task"})]:
        s = bench.learned(method, examples, steps, **kwargs)
        out[label] = s
        row(name, label, s, f"{s['learn_seconds']} s; loss {s['loss_first']:.3f}→{s['loss_last']:.3f}; "
                            f"mean λ per task {s['lambda_mean']}")
    results[name] = out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("main", "ablate", "variants"))
    parser.add_argument("--family", choices=("lm", "classifier", "all"), default="all")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--offset", type=int, default=0, help="skip this many unlabeled inputs per expert")
    parser.add_argument("--skip-baselines", action="store_true", help="main: learned methods only")
    parser.add_argument("--json", default=None, help="write all scores to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    results: dict = {}
    print("| family | merge | mean agreement % | per task | notes |\n|---|---|---|---|---|", flush=True)
    for fname, family in zoo.families().items():
        if args.family not in ("all", fname):
            continue
        bench = FamilyBench(family, offset=args.offset)
        if args.mode == "main":
            run_main(bench, args.steps, args.examples, results, baselines=not args.skip_baselines)
        elif args.mode == "variants":
            run_variants(bench, args.steps, args.examples, results)
        else:
            run_ablations(bench, args.steps, results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
