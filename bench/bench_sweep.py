"""A 5 x 5 (weight x density) TIES sweep of the LM zoo over all its tasks: every point merged in memory and scored
on every prompt of assets/tasks/zoo_lm.jsonl. Target: under 60 s on a 2-core CPU. Never run in CI.

    .venv/bin/python bench/bench_sweep.py [--method ties] [--weights 0.2:1.0:0.2] [--densities 0.2:1.0:0.2]
                                          [--record docs/benchmarks.md] [--out runs/bench_sweep.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import machine  # bench/machine.py (this folder is on sys.path when a script runs)
from transformers.utils import logging as transformers_logging

import zoo
from evaluation.sweep import SweepResult, parse_grid, prepare_sweep, run_sweep
from evaluation.tasks import load_tasks
from merging.recipe import Recipe

HEADING = "## Sweep of the LM zoo"


def markdown(result: SweepResult, timings: dict[str, float], args: argparse.Namespace, examples: int,
             load: tuple[float, float]) -> str:
    seconds = [p.seconds for p in result.points]
    best = result.best
    verdict = "within" if timings["total"] < 60 else "OVER"
    lines = [
        HEADING,
        "",
        f"`bench/bench_sweep.py` merges the LM zoo (base + experts {_experts()}) with {args.method} at every",
        (f"(weight, density) of a {len(result.rows.values)} x {len(result.columns.values)} grid in memory (LiveMerger, task "
         "vectors cached once), loads each merged state dict into"),
        (f"one model instance and scores it on all {examples} prompts of `assets/tasks/zoo_lm.jsonl` (tasks "
         f"{', '.join(result.tasks)}):"),
        "batched greedy generation, answers extracted, agreement with each expert and accuracy.",
        "",
        f"Machine: {machine()}; recorded {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Load average before / after: {load[0]:.1f} / {load[1]:.1f}{_shared_note()}",
        "",
        (f"Command: `.venv/bin/python bench/bench_sweep.py --method {args.method} --weights {args.weights} "
         f"--densities {args.densities}`"),
        "",
        "| step | seconds |",
        "|---|---|",
        f"| Python, torch, transformers imports | {timings['imports']:.1f} |",
        f"| load base + experts, cache task vectors | {timings['prepare']:.1f} |",
        f"| experts' answers (once for the sweep) | {timings['experts']:.1f} |",
        f"| {len(result.points)} points (merge + score) | {timings['points']:.1f} |",
        f"| per point: mean / max | {statistics.mean(seconds):.2f} / {max(seconds):.2f} |",
        f"| **total after imports** | **{timings['total']:.1f}** ({verdict} the 60 s target) |",
        "",
    ]
    if best is not None:
        summary = ", ".join(f"{k} {v:.0%}" for k, v in best.summary.items() if v is not None)
        per_task = ", ".join(
            f"{task} {_pct(score['accuracy'])} ({'own' if score['expert'] else 'best'} expert "
            f"{_pct(score['expert_accuracy'])})" for task, score in best.scores.items()
        )
        values = [p.value(result.metric) for p in result.points if p.value(result.metric) is not None]
        lines += [
            f"Best point by mean {result.metric}: weight {best.weight}, density {best.density} ({summary}).",
            (f"Its accuracy per task: {per_task}; mean {result.metric} over the grid ranges "
             f"{min(values):.0%}–{max(values):.0%}."),
            "",
        ]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _shared_note() -> str:
    busy = (os.cpu_count() or 8) <= 4
    return " (the 2 cores were shared with five other engineers' work, so times are noisy)." if busy else "."


def _experts() -> str:
    return ", ".join(zoo.families()["lm"].experts)


def record(path: Path, section: str) -> None:
    """Replace (or append) our section of the shared benchmarks page, leaving the others' sections alone."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n\n"
    if HEADING in text:
        start = text.index(HEADING)
        following = text.find("\n## ", start + len(HEADING))
        text = text[:start] + section.rstrip() + "\n" + (text[following:] if following != -1 else "")
    else:
        text = text.rstrip() + "\n\n" + section.rstrip() + "\n"
    path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="ties")
    parser.add_argument("--weights", default="0.2:1.0:0.2")
    parser.add_argument("--densities", default="0.2:1.0:0.2")
    parser.add_argument("--metric", default="accuracy")
    parser.add_argument("--record", default=None, help="markdown file to write our section into")
    parser.add_argument("--out", default=None, help="also write the sweep's results JSON (and CSV) here")
    args = parser.parse_args()
    transformers_logging.disable_progress_bar()
    imports = time.perf_counter() - STARTED
    load_before = os.getloadavg()[0]

    family = zoo.families()["lm"]
    tasks = load_tasks(family.tasks)
    start = time.perf_counter()
    recipe = Recipe.from_dict({"merge_method": args.method, "base_model": str(family.base),
                               "models": [{"model": str(path)} for path in family.experts.values()]})
    setup = prepare_sweep(recipe, tasks)
    prepared = time.perf_counter()
    setup.evaluator.expert_predictions()
    experts_done = time.perf_counter()
    result = run_sweep(setup.template, setup.merger, setup.evaluator, weights=parse_grid(args.weights),
                       densities=parse_grid(args.densities), metric=args.metric,
                       progress=lambda fraction, text: print(f"[{fraction:4.0%}] {text}", flush=True))
    end = time.perf_counter()
    timings = {"imports": imports, "prepare": prepared - start, "experts": experts_done - prepared,
               "points": end - experts_done, "total": end - start}
    section = markdown(result, timings, args, len(tasks), (load_before, os.getloadavg()[0]))
    print()
    print(section)
    if args.out:
        result.write(args.out)
    if args.record:
        record(Path(args.record), section)
        print(f"recorded in {args.record}")


if __name__ == "__main__":
    main()
