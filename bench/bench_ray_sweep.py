"""Sweeps on the shared runner (evaluation.runner), in process and on a local Ray cluster, and a merge search against
the grid (issue 16). Never run in CI; run it under the heavy lock:

    flock /tmp/mergelab-heavy.lock timeout 1800 .venv/bin/python bench/bench_ray_sweep.py sweep [--per-task 2]
    flock /tmp/mergelab-heavy.lock timeout 1800 .venv/bin/python bench/bench_ray_sweep.py search [--per-task 40]

`sweep`: a 5 x 5 ties sweep (weight x density) of the SmolLM2 family (base + math + japanese), first in this process
(one torch thread, as each Ray worker has), then on a 2-worker local Ray cluster; the same grid and seeds. Reports the
wall time of the points, each runner's mean seconds a point (merge + score, measured where it ran), and Ray's
per-point overhead: the round trip as the driver saw it (hand-out to result) beyond the worker's own seconds.
`search`: on the tiny LM zoo, TPE and CMA-ES searches with a budget of 15 against the 25-point grid, for 3 seeds
(each seed its own search/held-out split; `--seeds 1` runs one): the held-out accuracy of each one's best. Prints
markdown rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from machine import machine  # bench/machine.py (this folder is on sys.path when a script runs)
from transformers.utils import logging as transformers_logging

from evaluation.runner import InProcessRunner, RayRunner, build_scorer, connect_ray, recipe_spec
from evaluation.search import SearchSpace, recipe_build, recipe_grid, run_search, split_tasks
from evaluation.sweep import parse_grid, run_sweep
from evaluation.tasks import load_tasks
from merging.recipe import Recipe

GRID = parse_grid("0.2:1.0:0.2")


def _recipe(base: Path, experts: list[Path]) -> Recipe:
    return Recipe.from_dict({"merge_method": "ties", "base_model": str(base),
                             "models": [{"model": str(p)} for p in experts]})


def _sweep_on(runner, template: Recipe, grid: list[float]) -> dict:
    started = time.perf_counter()
    if isinstance(runner, RayRunner):
        runner.start()  # workers read the models and answer as the experts once: not part of the points
    else:
        runner.scorer.warm()  # the same for the in-process scorer
    ready = time.perf_counter()
    result = run_sweep(template, None, None, runner=runner, weights=grid, densities=grid, metric="accuracy")
    done = time.perf_counter()
    seconds = [p.seconds for p in result.points]
    return {"where": result.where, "setup": ready - started, "points_wall": done - ready, "points": len(seconds),
            "mean_point": statistics.mean(seconds), "summaries": [p.summary for p in result.points],
            "best": (result.best.weight, result.best.density, result.best.value("accuracy"))}


def sweep(args: argparse.Namespace) -> None:
    import torch

    import zoo
    from zoo.families import real_family

    family = real_family("smollm2")  # as built (python -m zoo build smollm2); built here only when missing
    if not family.base.is_dir():
        family = zoo.ensure_family("smollm2")
    template = _recipe(family.base, [family.experts["math"], family.experts["japanese"]])
    tasks = load_tasks(family.tasks).limited(args.per_task)
    spec = recipe_spec(template, tasks, threads=1)
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    runner = InProcessRunner(build_scorer(replace(spec, threads=1)))
    built = time.perf_counter() - started
    grid = parse_grid(args.grid)
    here = _sweep_on(runner, template, grid)
    here["setup"] += built  # reading the models is setup too
    del runner
    connect_ray("auto", num_cpus=2)
    ray_runner = RayRunner(spec, workers=2, address=None)
    on_ray = _sweep_on(ray_runner, template, grid)
    overheads = _overheads(ray_runner, template, spec, grid)
    ray_runner.close()
    print(json.dumps({"in_process": here, "ray": on_ray, "overhead": overheads}, indent=1, default=str))
    same = here["summaries"] == on_ray["summaries"]
    print(f"\nMachine: {machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load before "
          f"{load:.1f}, after {os.getloadavg()[0]:.1f}; {len(tasks)} prompts ({args.per_task} per task)")
    print(f"| runner | setup s | {len(grid) ** 2} points wall s | mean s a point (where it ran) | best (w, d, acc) |")
    print("|---|---|---|---|---|")
    for row in (here, on_ray):
        print(f"| {row['where']} | {row['setup']:.1f} | {row['points_wall']:.1f} | {row['mean_point']:.2f} | "
              f"{row['best']} |")
    print(f"same numbers in process and on Ray: {same}")
    print(f"Ray round trip beyond the worker's seconds, 1 worker, points one at a time: mean "
          f"{overheads['mean_overhead_s']:.3f} s on {overheads['mean_point_s']:.2f} s points "
          f"({overheads['share']:.1%})")


def _overheads(runner: RayRunner, template: Recipe, spec, grid: list[float]) -> dict:
    """Points one at a time on one worker (no contention between workers): round trip minus worker seconds."""
    from evaluation.runner import PointJob
    from evaluation.sweep import point_recipe

    runner.close()
    one = RayRunner(spec, workers=1, address=None)
    one.start()
    jobs = [PointJob(label=f"w={w}", recipe=point_recipe(template, "ties", w, 0.6), seed=0) for w in grid]
    outcomes = [one.run([job])[0] for job in jobs]
    one.close()
    extra = [o.wall_seconds - o.seconds for o in outcomes]
    point = statistics.mean(o.seconds for o in outcomes)
    return {"mean_overhead_s": statistics.mean(extra), "mean_point_s": point,
            "share": statistics.mean(extra) / point, "points": len(outcomes)}


def alternate(args: argparse.Namespace) -> None:
    """The same points alternately in process and on one Ray worker (both ready first), so that the machine's load
    falls on both alike: each point's seconds where it ran, and the Ray round trip beyond them."""
    import torch

    from evaluation.runner import PointJob
    from evaluation.sweep import point_recipe
    from zoo.families import real_family

    family = real_family("smollm2")
    template = _recipe(family.base, [family.experts["math"], family.experts["japanese"]])
    spec = recipe_spec(template, load_tasks(family.tasks).limited(args.per_task), threads=1)
    torch.set_num_threads(1)
    here = InProcessRunner(build_scorer(replace(spec, threads=1)))
    here.scorer.warm()
    connect_ray("auto", num_cpus=2)
    there = RayRunner(spec, workers=1, address=None)
    there.start()
    load = os.getloadavg()[0]
    rows = {"in process": [], "Ray, 1 worker": []}
    for round_ in range(args.rounds):
        job = PointJob(label=f"round {round_}", recipe=point_recipe(template, "ties", 0.6, 0.2 + 0.15 * round_))
        for name, runner in (("in process", here), ("Ray, 1 worker", there))[:: 1 if round_ % 2 == 0 else -1]:
            outcome = runner.run([job])[0]
            rows[name].append((outcome.seconds, outcome.wall_seconds))
    there.close()
    print(f"Machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load before {load:.1f}, "
          f"after {os.getloadavg()[0]:.1f}; {args.rounds} points each, alternating")
    print("| runner | mean s a point (where it ran) | median | mean wall s (as the caller saw it) |\n|---|---|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {statistics.mean(v[0] for v in values):.2f} | "
              f"{statistics.median(v[0] for v in values):.2f} | {statistics.mean(v[1] for v in values):.2f} |")
    ratio = statistics.mean(v[1] for v in rows["Ray, 1 worker"]) / statistics.mean(v[1] for v in rows["in process"])
    print(f"Ray wall / in-process wall: {ratio:.3f}")


def _chosen(candidate) -> str:
    """A search's or the grid's best point: its parameters (each expert's weight and density, the expert named by its
    folder), or its settings."""
    values = candidate.params or (candidate.settings or {})
    return ", ".join(f"{_short(k)} {v:.2f}" if isinstance(v, float) else f"{_short(k)} {v}" for k, v in values.items())


def _short(key: str) -> str:
    """"weight:/…/lm/math:0" -> "math weight" (a search parameter's name); other keys as they are."""
    kind, _, rest = key.partition(":")
    return f"{Path(rest.rpartition(':')[0]).name} {kind}" if rest else key


def search(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    zoo_dir = REPO / "assets" / "zoo" / "lm"
    template = _recipe(zoo_dir / "base", [zoo_dir / "math", zoo_dir / "japanese"])
    tasks = load_tasks(REPO / "assets" / "tasks" / "zoo_lm.jsonl").limited(args.per_task)
    space = SearchSpace("ties", tuple(m.model for m in template.models))
    rows = []
    load = os.getloadavg()[0]
    for seed in args.seeds:
        splits = split_tasks(tasks, 0.5, seed=seed)
        runner = InProcessRunner(build_scorer(recipe_spec(template, splits, threads=1)))
        grid = recipe_grid(template, "ties", GRID, GRID)
        for sampler in ("tpe", "cmaes"):
            result = run_search(runner, space, recipe_build(template, space), budget=args.budget, sampler=sampler,
                                seed=seed, grid=grid if sampler == "tpe" else ())
            if sampler == "tpe":
                grid_best = result.grid_best
                rows.append((seed, f"grid ({len(grid)} points)", grid_best.search_value, grid_best.held_out_value,
                             _chosen(grid_best)))
            rows.append((seed, f"{sampler} (budget {args.budget})", result.best.search_value,
                         result.best.held_out_value, _chosen(result.best)))
    print(f"Machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load before {load:.1f}, "
          f"after {os.getloadavg()[0]:.1f}; {len(tasks)} prompts ({args.per_task} per task), half held out")
    print("| seed | what | search-split accuracy | held-out accuracy | chosen |\n|---|---|---|---|---|")
    for seed, what, found, held, chosen in rows:
        print(f"| {seed} | {what} | {found:.1%} | {held:.1%} | {chosen} |")
    for what in ("grid", "tpe", "cmaes"):
        held = [r[3] for r in rows if r[1].startswith(what)]
        print(f"| mean | {what} | | {statistics.mean(held):.1%} |")


def main() -> None:
    transformers_logging.disable_progress_bar()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("sweep")
    one.add_argument("--per-task", type=int, default=2)
    one.add_argument("--grid", default="0.2:1.0:0.2", help="weights and densities; default 0.2:1.0:0.2 (5 x 5)")
    one.set_defaults(handler=sweep)
    ab = commands.add_parser("alternate")
    ab.add_argument("--per-task", type=int, default=2)
    ab.add_argument("--rounds", type=int, default=6)
    ab.set_defaults(handler=alternate)
    two = commands.add_parser("search")
    two.add_argument("--per-task", type=int, default=40)
    two.add_argument("--budget", type=int, default=15)
    two.add_argument("--seeds", type=lambda text: [int(x) for x in text.split(",")], default=[0, 1, 2],
                     help="split and sampler seeds, e.g. 0,1,2 (default); one at a time fits a short lock hold")
    two.set_defaults(handler=search)
    args = parser.parse_args()
    args.handler(args)


if __name__ == "__main__":
    main()
