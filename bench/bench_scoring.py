"""Scoring a merge of the SmolLM2 family on its task set: cold (the experts' answers generated, then the merged
model's) and warm (a new Evaluator in a new process state reads the experts' answers from the cache folder and only
the merged model generates), plus the merged model per task. Target: warm under 60 s on a 2-core CPU. Never run in CI.

    .venv/bin/python bench/bench_scoring.py [--root FAMILY_ROOT] [--dtype float32|bfloat16|auto] [--threads N]
                                            [--batch-size N] [--per-task N] [--compare-dtypes]

FAMILY_ROOT holds base/, one folder per expert and tasks.jsonl (`python -m zoo build smollm2` prints it; the default
is that family, built if missing). The merged model is task arithmetic at weight 0.5 of every expert, made in memory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch
from machine import machine  # bench/machine.py (this folder is on sys.path when a script runs)
from transformers.utils import logging as transformers_logging

from evaluation.agreement import Evaluator
from evaluation.answer_cache import AnswerCache
from evaluation.tasks import TaskSet, load_tasks
from inference.generation import scoring_dtype
from inference.loading import load_model
from merging.sources import open_model


def family_root(given: str | None) -> Path:
    if given:
        return Path(given)
    import zoo

    return zoo.ensure_family("smollm2").root


def merged_state(base: Path, experts: list[Path], weight: float = 0.5) -> dict[str, torch.Tensor]:
    """base + weight · Σ (expert − base), tensor by tensor, in float32 (task arithmetic without a method call)."""
    state = {}
    with open_model(str(base)) as source:
        others = [open_model(str(e)) for e in experts]
        for name in source.tensor_names():
            tensor = source.get(name).float()
            delta = sum(o.get(name).float() - tensor for o in others)
            state[name] = tensor + weight * delta
        for other in others:
            other.close()
    return state


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def run(root: Path, dtype: str | None, batch_size: int | None, per_task: int | None,
        cache_dir: Path | None = None) -> dict:
    tasks = load_tasks(root / "tasks.jsonl").limited(per_task)
    expert_names = tasks.experts
    experts, load_s = timed(lambda: {n: load_model(root / n, dtype=dtype) for n in expert_names})
    state = merged_state(root / "base", [root / n for n in expert_names])
    cache_dir = cache_dir or Path(tempfile.mkdtemp(prefix="bench-scoring-"))
    template = load_model(root / "base", dtype=dtype)
    cold_eval = Evaluator(tasks, experts, batch_size=batch_size, template=template,
                          answer_cache=AnswerCache(cache_dir))
    cold, cold_s = timed(lambda: cold_eval.score_state(state))
    warm_eval = Evaluator(tasks, experts, batch_size=batch_size, template=template,
                          answer_cache=AnswerCache(cache_dir))  # nothing in memory: reads the folder
    warm, warm_s = timed(lambda: warm_eval.score_state(state))
    assert warm.to_dict() == cold.to_dict(), "the cached answers must score exactly as the generated ones"
    per_task_s = {}
    for name, task in tasks.tasks.items():
        subset = TaskSet(list(task.examples), source=tasks.source)
        one = Evaluator(subset, experts, batch_size=batch_size, template=template, answer_cache=AnswerCache(cache_dir))
        one.expert_predictions()  # from the cache
        _, per_task_s[name] = timed(lambda one=one: one.score_state(state))
    return {"tasks": tasks, "load_s": load_s, "cold_s": cold_s, "warm_s": warm_s, "per_task_s": per_task_s,
            "result": warm}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=None, help="family root (base/, experts, tasks.jsonl)")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | auto; default as python -m evaluation: "
                        "the models' own where bf16 is native, else float32")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default torch's)")
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per batch (default by device)")
    parser.add_argument("--per-task", type=int, default=None, help="only the first N prompts of each task")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="keep the experts' answers here across runs (then 'cold' is warm too); default a new "
                             "temporary folder")
    parser.add_argument("--compare-dtypes", action="store_true", help="also score in float32 and compare answers")
    args = parser.parse_args()
    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = family_root(args.root)
    args.dtype = args.dtype or scoring_dtype("cpu") or "float32"
    load = os.getloadavg()
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}; load before {load[0]:.1f}")
    figures = run(root, args.dtype, args.batch_size, args.per_task, args.cache_dir)
    tasks = figures["tasks"]
    counts = ", ".join(f"{n} {len(t.examples)}" for n, t in tasks.tasks.items())
    print(f"family {root} ({len(tasks.experts)} experts; {len(tasks)} prompts: {counts}); dtype {args.dtype}")
    print(f"experts loaded in {figures['load_s']:.1f} s")
    print(f"cold (experts generate, then the merged model): {figures['cold_s']:.1f} s")
    print(f"warm (experts read from the cache folder, merged model only): {figures['warm_s']:.1f} s")
    for name, seconds in figures["per_task_s"].items():
        print(f"  merged model alone on {name}: {seconds:.1f} s")
    summary = figures["result"].summary()
    print("merged model: " + ", ".join(f"{k} {v:.2f}" for k, v in summary.items() if v is not None))
    if args.compare_dtypes:
        other = run(root, "float32", args.batch_size, args.per_task)
        same = sum(a == b for task in tasks.task_names
                   for a, b in zip(figures["result"].outputs[task], other["result"].outputs[task]))
        print(f"float32: cold {other['cold_s']:.1f} s, warm {other['warm_s']:.1f} s; merged model's outputs equal "
              f"to {args.dtype}'s on {same} of {len(tasks)} prompts; float32 "
              + ", ".join(f"{k} {v:.2f}" for k, v in other["result"].summary().items() if v is not None))
    print(f"load after {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
