"""Command line:

    python -m evaluation run --model DIR --tasks FILE.jsonl [--expert NAME=DIR ...] --out FILE.json   (+ .csv)
    python -m evaluation sweep RECIPE.yaml --tasks FILE.jsonl --weights 0.2:1.0:0.2 --densities 0.2:1.0:0.2
                               [--method ties,dare_ties] [--metric accuracy] --out FILE.json   (+ .csv, .best.yaml)
    python -m evaluation interference RECIPE.yaml [--density 0.5] --out FILE.json
    python -m evaluation compare LEARNED_DIR --tasks FILE.jsonl --out FILE.json    (a learned merge beside task
                               arithmetic and TIES, as the Learn tab's Compare; LEARNED_DIR from python -m merging learn)
    python -m evaluation compare LEARNED_DIR --preset glue-bert --out FILE.json    (the same for the glue-bert preset,
                               on GLUE validation: evaluation/learned_presets.py)

User errors (MergeLabError) print one paragraph and exit with status 2, without a traceback.
The experts' generated answers are kept in a cache folder (--cache-dir, default $MERGELAB_ANSWER_CACHE or
~/.cache/mergelab/expert-answers; --no-cache to keep them in memory only), so scoring another merge of the same
experts on the same tasks generates only with the merged model. Models load in their own dtype where that is fast
(a GPU, or a CPU with native bf16), else in float32 (--dtype to choose).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from evaluation.results import write_results
from evaluation.tasks import load_tasks
from merging.errors import MergeLabError

# torch and transformers (through inference/ and most of evaluation/) are imported inside the subcommands that use
# them: `--help` and a mistyped argument answer at once instead of after seconds of imports.

EXIT_USER_ERROR = 2


def _expert_pairs(values: Sequence[str] | None) -> dict[str, str]:
    experts = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise MergeLabError(f"--expert {value!r} must be NAME=DIR, e.g. --expert math=assets/zoo/lm/math.")
        experts[name.strip()] = path.strip()
    return experts


def _write_json(path: str, data: dict[str, Any]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    return out


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:6.1%}"


def _print_scores(scores: Mapping[str, Any]) -> None:
    """One line per task; a "ja replies" column (accuracy counting Japanese replies only) when a task asks for it."""
    japanese = any(s.japanese_accuracy is not None for s in scores.values())
    print(f"{'task':<20} {'expert':<12} {'agreement':>9} {'accuracy':>9} {'expert acc':>10}"
          + (f" {'ja replies':>10}" if japanese else ""))
    for name, s in scores.items():
        print(f"{name:<20} {s.expert or '-'!s:<12} {_percent(s.agreement):>9} {_percent(s.accuracy):>9} "
              f"{_percent(s.expert_accuracy):>10}" + (f" {_percent(s.japanese_accuracy):>10}" if japanese else ""))


# --- run ------------------------------------------------------------------------------------------------------


def _quiet_transformers() -> None:
    from transformers.utils import logging as transformers_logging  # deferred: transformers (module comment)

    transformers_logging.disable_progress_bar()  # "Loading weights" bars would drown the report


def _answer_cache(args: argparse.Namespace) -> Any:
    from evaluation.answer_cache import AnswerCache, default_directory  # deferred: transformers

    return AnswerCache(None if args.no_cache else (args.cache_dir or default_directory()))


def _dtype(args: argparse.Namespace) -> str | None:
    from inference.generation import scoring_dtype  # deferred: transformers

    return args.dtype or scoring_dtype(args.device)


def _run(args: argparse.Namespace) -> int:
    _quiet_transformers()
    from evaluation.agreement import Evaluator, check_same_architecture  # deferred: transformers (module comment)
    from inference.loading import load_model  # deferred: transformers (module comment)

    tasks = load_tasks(args.tasks).limited(args.per_task)
    dtype = _dtype(args)
    model = load_model(args.model, device=args.device, dtype=dtype)
    experts = {name: load_model(path, device=args.device, dtype=dtype)
               for name, path in _expert_pairs(args.expert).items()}
    for name, expert in experts.items():  # name the odd one out against the model, before experts are compared
        check_same_architecture(model.model, expert.model, name)
    result = Evaluator(tasks, experts, answer_cache=_answer_cache(args)).score(model)
    data = {"model": str(args.model), "tasks_file": str(args.tasks), "experts": _expert_pairs(args.expert),
            **result.to_dict(), "questions": {t.name: t.inputs for t in tasks.tasks.values()},
            "expected": {t.name: t.answers for t in tasks.tasks.values()}}
    _print_scores(result.scores)
    written = write_results(args.out, data)
    print(f"wrote {written['json']}, {written['csv']}")
    return 0


# --- sweep ----------------------------------------------------------------------------------------------------


def _runner(args: argparse.Namespace, template: Any, tasks: Any) -> Any:
    """The sweep's or search's runner: Ray workers (--ray auto | ADDRESS) or this process, for the recipe's models
    scored on `tasks` (one task set or named splits)."""
    from evaluation.answer_cache import default_directory  # deferred: transformers
    from evaluation.runner import InProcessRunner, RayRunner, build_scorer, recipe_spec  # deferred: torch

    cache_dir = None if args.no_cache else str(args.cache_dir or default_directory())
    spec = recipe_spec(template, tasks, experts=_expert_pairs(args.expert), device=args.device, dtype=_dtype(args),
                       threads=args.threads or 0, cache_dir=cache_dir)
    if args.ray:
        return RayRunner(spec, workers=args.workers, address=args.ray)
    return InProcessRunner(build_scorer(spec))


def _progress(args: argparse.Namespace) -> Any:
    def progress(fraction: float, text: str) -> None:
        if not args.quiet:
            print(f"[{fraction:4.0%}] {text}", file=sys.stderr)

    return progress


def _sweep(args: argparse.Namespace) -> int:
    _quiet_transformers()
    from evaluation.sweep import MAX_GRID_POINTS, parse_grids, run_sweep  # deferred: torch
    from merging.recipe import load_recipe  # deferred: torch, through merging (module comment)

    weights, densities = parse_grids(args.weights, args.densities, max_points=MAX_GRID_POINTS,
                                     row_name="weight", column_name="density")
    methods = [m.strip() for m in args.method.split(",") if m.strip()] if args.method else None
    template = load_recipe(args.recipe, validate=False)  # each point is validated when merged
    runner = _runner(args, template, load_tasks(args.tasks).limited(args.per_task))
    try:
        result = run_sweep(template, None, None, weights=weights, densities=densities, methods=methods,
                           metric=args.metric, seed=args.seed, progress=_progress(args), runner=runner)
    finally:
        runner.close()
    written = result.write(args.out)
    for failed in result.failed:
        print(f"not scored: {failed['label']}: {failed['incident']}")
    for method in result.methods:
        _print_grid(result, method)
    _print_best(result, args.metric)
    retried = [p for p in result.points if p.incident]
    for point in retried:
        print(f"note: weight={point.weight} density={point.density}: {point.incident}")
    print(f"{len(result.points)} points in {result.seconds:.1f} s ({result.where}); wrote "
          + ", ".join(map(str, written.values())))
    return 0


# --- search ---------------------------------------------------------------------------------------------------


def _search(args: argparse.Namespace) -> int:
    _quiet_transformers()
    from evaluation.search import SearchSpace, recipe_build, recipe_grid, run_search, split_tasks  # deferred: torch
    from evaluation.sweep import MAX_GRID_POINTS, parse_grids  # deferred: torch
    from merging.recipe import load_recipe  # deferred: torch, through merging (module comment)

    template = load_recipe(args.recipe, validate=False)
    method = args.method or template.merge_method
    models = tuple(m.model for m in template.models if m.model != template.base_model)
    space = SearchSpace(method, models, layer_ranges=args.layer_ranges)
    grid = []
    if not args.no_grid:
        weights, densities = parse_grids(args.grid_weights, args.grid_densities, max_points=MAX_GRID_POINTS,
                                         row_name="weight", column_name="density")
        grid = recipe_grid(template, method, weights, densities)
    splits = split_tasks(load_tasks(args.tasks).limited(args.per_task), args.held_out, args.seed)
    runner = _runner(args, template, splits)
    try:
        result = run_search(runner, space, recipe_build(template, space), budget=args.budget, sampler=args.sampler,
                            seed=args.seed, metric=args.metric, grid=grid, progress=_progress(args))
    finally:
        runner.close()
    written = result.write(args.out)
    _print_search(result)
    print(f"wrote {', '.join(map(str, written.values()))}")
    return 0


def _print_search(result: Any) -> None:
    best, grid_best = result.best, result.grid_best
    print(f"{result.sampler} search of {result.method}, {len(result.trials)} proposals in {result.seconds:.1f} s "
          f"({result.where}); {result.metric}:")
    print(f"{'':<22} {'search split':>12} {'held out':>9}")
    for name, candidate in (("best proposal", best), (f"best of {len(result.grid)}-point grid", grid_best)):
        if candidate is not None:
            print(f"{name:<22} {_percent(candidate.search_value):>12} {_percent(candidate.held_out_value):>9}")
    if best is not None:
        print("best proposal's parameters: " + ", ".join(f"{k}={v:.3f}" for k, v in best.params.items()))
    for line in result.failed:
        print(f"not scored: {line}")


def _print_grid(result: Any, method: str) -> None:
    """One method's grid, the best cells starred (each of several that tie for the top; none when all tie)."""
    weights, densities, z = result.grid(method)
    best = {(p.row, p.column) for p in result.best_points()[0] if p.method == method}
    print(f"{method}: {result.metric} (rows: weight, columns: density)")
    print("weight \\ density " + " ".join(f"{'-' if d is None else f'{d:g}':>7}" for d in densities))
    for weight, row in zip(weights, z, strict=True):
        cells = " ".join(f"{('*' if (weight, d) in best else '') + _percent(v).strip():>7}"
                         for d, v in zip(densities, row, strict=True))
        print(f"{'-' if weight is None else f'{weight:g}':>16} {cells}")


def _print_best(result: Any, metric: str) -> None:
    """The best point (and how many tie for it), or why no point is best (* marks the best cells above)."""
    best, note = result.best_points()
    if note is not None:
        print(f"no best {metric}: {note}")
    elif best:
        tied = f" (* {len(best)} points tie for it)" if len(best) > 1 else " (*)"
        print(f"best {metric} = {best[0].value(metric):.3f} with {best[0].method} weight={best[0].weight} "
              f"density={best[0].density}{tied}")


# --- interference ---------------------------------------------------------------------------------------------


def _interference(args: argparse.Namespace) -> int:
    from evaluation.folder_state import LazyFolderState  # deferred: torch (module comment)
    from evaluation.interference import interference_report  # deferred: torch (module comment)
    from merging.recipe import load_recipe  # deferred: torch, through merging (module comment)

    recipe = load_recipe(args.recipe, validate=False)
    if not recipe.base_model:
        raise MergeLabError("The recipe has no base_model: task vectors are measured against the base, so name it.")
    # Named by folder, as sweeps name experts (evaluation.sweep.expert_name, not imported: it pulls transformers).
    experts = {Path(m.model).name: LazyFolderState(m.model) for m in recipe.models if m.model != recipe.base_model}
    report = interference_report(LazyFolderState(recipe.base_model), experts, density=args.density,
                                 per_tensor=args.per_tensor)
    overall = report.overall
    print(f"tasks: {', '.join(report.tasks)}; sign conflicts {_percent(overall['sign_conflict_rate'])}, "
          f"mean cosine {overall['mean_cosine']:.3f}, mean Jaccard of kept entries at density {args.density:g} "
          f"{overall['mean_jaccard']:.3f}")
    for task in report.tasks:
        print(f"  {task}: TIES keeps {_percent(overall['kept_mass_share'][task])} of its magnitude, "
              f"{_percent(overall['kept_count_share'][task])} of its non-zero entries")
    print(f"wrote {_write_json(args.out, report.to_dict())}")
    return 0


# --- compare --------------------------------------------------------------------------------------------------


def _compare(args: argparse.Namespace) -> int:
    _quiet_transformers()
    from evaluation import baselines as fair  # deferred: torch
    from evaluation.charts import comparison_markdown  # deferred: plotly, which charts.py imports, is slow to import

    if args.preset:
        method, scores, choices, error, data = _compare_preset(args)
    elif args.tasks:
        method, scores, choices, error, data = _compare_on_tasks(args)
    else:
        raise MergeLabError("give --tasks FILE.jsonl (a task set) or --preset glue-bert (the preset's GLUE "
                            "validation examples)")
    print(comparison_markdown(scores, {name: choice.describe() for name, choice in choices.items()}, error))
    reason = fair.why_not_better(method, error)
    if reason:
        print(f"\nWhy the learned merge is not shown to beat task arithmetic here: {reason}")
    data = {"learned": str(args.learned), "method": method, **data, **_comparison_data(scores, choices, error),
            "why_not_better": reason}
    print(f"wrote {_write_json(args.out, data)}")
    return 0


def _compare_on_tasks(args: argparse.Namespace) -> tuple[str, dict, dict, Any, dict[str, Any]]:
    """A learned merge from a task set's prompts, beside its baselines on that task set (generation and answers)."""
    from evaluation import baselines as fair  # deferred: torch
    from evaluation.sweep import prepare_sweep  # deferred: torch (module comment)
    from merging.learned.recipe_io import INFO_FILE, RECIPE_FILE  # deferred: torch (module comment)

    folder = Path(args.learned)
    recipe, info = folder / RECIPE_FILE, folder / INFO_FILE
    if not recipe.is_file() or not info.is_file():
        raise MergeLabError(f"{folder} is not a learned merge: it needs {RECIPE_FILE} and {INFO_FILE}, as "
                            "`python -m merging learn --out DIR` writes them.")
    try:
        learned = json.loads(info.read_text(encoding="utf-8"))
        method, experts = learned["method"], dict(learned["experts"])
        inputs = dict(learned.get("learning_inputs") or {})
    except (ValueError, KeyError, TypeError) as error:
        raise MergeLabError(f"{info} is not readable as a learned merge's summary ({error!r}): write the folder again "
                            "with `python -m merging learn --out DIR`.") from None
    if method not in fair.WHY_NOT:
        raise MergeLabError(f"{info} names method {method!r}; learned merges are {', '.join(fair.WHY_NOT)}.")
    tasks = load_tasks(args.tasks).limited(args.per_task)
    setup = prepare_sweep(recipe, tasks, experts=experts, device=args.device, dtype=_dtype(args),
                          answer_cache=_answer_cache(args))
    base = setup.template.base_model
    refs = [m.model for m in setup.template.models if m.model != base]

    def merge(settings: Mapping[str, Any]) -> Any:
        return setup.merger.merge(fair.settings_recipe(base, refs, settings), seed=0)

    scores, choices = fair.compare_fairly(setup.evaluator, method, lambda: setup.merger.merge(setup.template, seed=0),
                                          merge, len(refs), inputs)
    error = fair.comparison_error(setup.evaluator, method, scores)
    data = {"tasks_file": str(args.tasks),
            "baselines": {name: fair.settings_recipe(base, refs, c.settings).to_dict() for name, c in choices.items()}}
    return method, scores, choices, error, data


def _compare_preset(args: argparse.Namespace) -> tuple[str, dict, dict, Any, dict[str, Any]]:
    """A learned merge of a preset (glue-bert), beside its baselines on the preset's validation examples."""
    from evaluation.learned_presets import compare_preset  # deferred: torch (module comment)

    if args.tasks:
        raise MergeLabError("give either --tasks or --preset: the preset scores its own GLUE validation examples")
    result = compare_preset(args.learned, args.preset, models_dir=args.preset_models, data_dir=args.preset_data,
                            eval_per_task=args.per_task or 1000, allow_pickle=args.allow_pickle, device=args.device)
    data = {"preset": args.preset, "baselines": {name: c.settings for name, c in result.choices.items()}}
    return result.method, result.scores, result.choices, result.error, data


def _comparison_data(scores: Mapping[str, Any], choices: Mapping[str, Any], error: Any) -> dict[str, Any]:
    """compare's JSON: how each baseline was chosen, every merge's scores, each mean's scored-set ± (half-width of
    its 95 % interval) and the learned merge minus each baseline with its paired 95 % interval."""
    return {
        "baseline_choices": {name: {"how": c.how, "learning_split_agreement": c.score, "described": c.describe(),
                                    "tried": [{"settings": s, "learning_split_agreement": v} for s, v in c.tried]}
                             for name, c in choices.items()},
        "scores": {name: result.to_dict() for name, result in scores.items()},
        "scored_set_halfwidth": error.halfwidth,
        "learned_minus_baseline": {name: {m: None if d is None else asdict(d) for m, d in diffs.items()}
                                   for name, diffs in error.paired.items()},
    }


# --- entry point ----------------------------------------------------------------------------------------------


def _scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """What every subcommand that generates answers takes: how many examples, where and in which dtype, threads and
    the experts' answer cache."""
    parser.add_argument("--per-task", type=int, default=None, help="only the first N examples of each task")
    parser.add_argument("--device", default="cpu", help="where the experts and the scored model run: cpu or cuda; "
                        "default cpu")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 | auto; default: the models' own "
                        "where fast (GPU, CPU with native bf16), else float32")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads; 1 is steadier on a busy 2-core machine (docs/benchmarks.md, Scoring)")
    parser.add_argument("--cache-dir", default=None,
                        help="where the experts' answers are kept (default $MERGELAB_ANSWER_CACHE or "
                             "~/.cache/mergelab/expert-answers)")
    parser.add_argument("--no-cache", action="store_true", help="keep the experts' answers in memory only")


def _ray_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ray", default=None, metavar="auto|ADDRESS",
                        help="score points on Ray workers: auto starts a local cluster, an address joins one; "
                             "default: in this process")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers (one per GPU, or CPU workers); default 2")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluation", description="Score merged models against experts.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="score one model folder on a task set")
    run.add_argument("--model", required=True, help="the (merged) model folder")
    run.add_argument("--tasks", required=True, help="JSONL task file")
    run.add_argument("--expert", action="append", metavar="NAME=DIR", help="an expert to measure agreement with")
    run.add_argument("--out", required=True, help="results JSON file")
    _scoring_arguments(run)
    run.set_defaults(handler=_run)

    sweep = commands.add_parser("sweep", help="merge and score a weight x density grid in memory")
    sweep.add_argument("recipe", help="mergekit-style YAML recipe (base_model + the models to merge)")
    sweep.add_argument("--tasks", required=True, help="JSONL task file")
    sweep.add_argument("--weights", default="0.2:1.0:0.2", help="start:stop:step or a,b,c; default 0.2:1.0:0.2")
    sweep.add_argument("--densities", default="0.2:1.0:0.2", help="start:stop:step or a,b,c; default 0.2:1.0:0.2")
    sweep.add_argument("--method", default=None, help="method(s), comma separated; default the recipe's")
    sweep.add_argument("--metric", default="accuracy",
                       help="agreement | accuracy | normalized_accuracy, or TASK.METRIC; default accuracy")
    sweep.add_argument("--expert", action="append", metavar="NAME=DIR",
                       help="name a recipe model after the expert its tasks name (default: its folder name)")
    sweep.add_argument("--seed", type=int, default=0, help="seed for random methods; default 0")
    sweep.add_argument("--out", required=True, help="results JSON file (the CSV and best recipe go beside it)")
    _scoring_arguments(sweep)
    sweep.add_argument("--quiet", action="store_true", help="no progress lines")
    _ray_arguments(sweep)
    sweep.set_defaults(handler=_sweep)

    search = commands.add_parser("search", help="search per-model weights and densities with Optuna; report the "
                                                "best on held-out examples beside the best grid point")
    search.add_argument("recipe", help="mergekit-style YAML recipe (base_model + the models to merge)")
    search.add_argument("--tasks", required=True, help="JSONL task file (split into search and held-out examples)")
    search.add_argument("--budget", type=int, default=15, help="proposals to score; default 15")
    search.add_argument("--sampler", choices=["tpe", "cmaes"], default="tpe", help="Optuna sampler; default tpe")
    search.add_argument("--method", default=None, help="merge method; default the recipe's")
    search.add_argument("--layer-ranges", type=int, default=1,
                        help="search each value per layer range: a mergekit gradient of N points; default 1 (scalar)")
    search.add_argument("--held-out", type=float, default=0.5, help="share of each task held out; default 0.5")
    search.add_argument("--metric", default="accuracy", help="accuracy | agreement | normalized_accuracy, or "
                        "TASK.METRIC; default accuracy")
    search.add_argument("--grid-weights", default="0.2:1.0:0.2", help="the grid compared with; default 0.2:1.0:0.2")
    search.add_argument("--grid-densities", default="0.2:1.0:0.2", help="default 0.2:1.0:0.2")
    search.add_argument("--no-grid", action="store_true", help="do not score the grid for comparison")
    search.add_argument("--expert", action="append", metavar="NAME=DIR",
                        help="name a recipe model after the expert its tasks name (default: its folder name)")
    search.add_argument("--seed", type=int, default=0, help="sampler, split and random-method seed; default 0")
    search.add_argument("--out", required=True, help="results JSON file (the best recipe's YAML goes beside it)")
    _scoring_arguments(search)
    search.add_argument("--quiet", action="store_true", help="no progress lines")
    _ray_arguments(search)
    search.set_defaults(handler=_search)

    interference = commands.add_parser("interference", help="how the recipe's task vectors interfere")
    interference.add_argument("recipe", help="mergekit-style YAML recipe (base_model + at least two models)")
    interference.add_argument("--density", type=float, default=0.5, help="TIES trimming density; default 0.5")
    interference.add_argument("--per-tensor", action="store_true", help="also write one row per tensor")
    interference.add_argument("--out", required=True, help="report JSON file")
    interference.set_defaults(handler=_interference)

    compare = commands.add_parser("compare", help="a learned merge beside task arithmetic and TIES, on one task set")
    compare.add_argument("learned", help="a learned merge's folder (recipe.yaml + learned.json, from "
                                         "python -m merging learn)")
    compare.add_argument("--tasks", default=None, help="JSONL task file (or --preset)")
    compare.add_argument("--preset", choices=("glue-bert",), default=None,
                         help="a learned merge of `python -m merging learn --preset glue-bert`: scored on the "
                              "preset's GLUE validation examples (--per-task of them, default 1000)")
    compare.add_argument("--preset-models", default=None, help="preset: local model folders instead of the Hub")
    compare.add_argument("--preset-data", default=None, help="preset: local JSONL per task instead of GLUE")
    compare.add_argument("--allow-pickle", action="store_true",
                         help="preset: accept PyTorch pickle checkpoints (textattack's), loaded with weights_only")
    compare.add_argument("--out", required=True, help="results JSON file")
    _scoring_arguments(compare)
    compare.set_defaults(handler=_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        import torch  # deferred: torch (see the module comment)

        torch.set_num_threads(max(1, args.threads))
    try:
        return args.handler(args)
    except MergeLabError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
