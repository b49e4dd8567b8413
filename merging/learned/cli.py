"""`python -m merging learn`: learn layer-wise (or task-wise) merging coefficients and write a recipe folder.

    python -m merging learn --method samerging --base DIR --expert math=DIR --expert japanese=DIR \
        --prompts unlabeled.jsonl --examples-per-task 16 --out RECIPE_DIR

Defaults (merging.learned.api.default_config): start at the best constant λ of {0.1, 0.3, 0.5, 0.7, 1.0} by the
training loss, Adam lr 1e-2, up to 200 steps with early stopping on a held-out quarter of each task's inputs
(never learned on), SAMerging's ASAM radius set so that ‖ε‖ ≈ 5 % of ‖λ‖.

The prompts file is a task-set JSONL (`task`, `prompt` or `text`, `expert`): lines owned by expert NAME are that
expert's unlabeled inputs; lines whose expert is null (composite tasks) are not used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from merging.cli import register_subcommand
from merging.errors import MergeLabError
from merging.learned import presets
from merging.learned.api import LearnedMerge, default_config, describe_run, learn_merge, save_learned_merge
from merging.learned.inputs import read_inputs


def _parse_experts(values: list[str]) -> dict[str, str]:
    experts: dict[str, str] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep or not name or not folder:
            raise MergeLabError(f"--expert {value!r} must look like NAME=DIR (the name used in the prompts file)")
        if name in experts:
            raise MergeLabError(f"expert {name!r} is given twice: give each --expert NAME once")
        experts[name] = folder
    return experts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=("samerging", "adamerging"), default="samerging")
    parser.add_argument("--base", help="base model folder (the experts' common ancestor)")
    parser.add_argument("--expert", action="append", metavar="NAME=DIR",
                        help="an expert and its task name in the prompts file; repeat for each expert")
    parser.add_argument("--prompts", help="task-set JSONL with unlabeled prompts/texts per expert")
    parser.add_argument("--preset", choices=("glue-bert",), default=None,
                        help="glue-bert: bert-base-uncased + the six textattack GLUE teachers from the Hub, 32 GLUE "
                             "training inputs per task, scored on GLUE validation (replaces --base/--expert/--prompts)")
    parser.add_argument("--preset-models", default=None, help="preset: local model folders instead of the Hub")
    parser.add_argument("--preset-data", default=None, help="preset: local JSONL per task instead of GLUE")
    parser.add_argument("--eval-per-task", type=int, default=1000, help="preset: validation examples scored per task")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="preset: accept PyTorch pickle checkpoints (textattack's), loaded with weights_only")
    parser.add_argument("--examples-per-task", type=int, default=None,
                        help="unlabeled inputs per task (default 16; the glue-bert preset: 32)")
    parser.add_argument("--defaults", choices=("mergelab", "paper"), default="mergelab",
                        help="mergelab (default: searched start, Adam lr 1e-2, early stopping, relative SAM radius) "
                             "or paper: the papers' public code (SAMerging: SGD momentum 0.99 lr 1e-3, ASAM rho 0.07, "
                             "start 0, unit-norm task vectors, 1000 steps, no held-out inputs); other options "
                             "still override it")
    parser.add_argument("--batch-size", type=int, default=16, help="examples per task in each step; default 16")
    parser.add_argument("--steps", type=int, default=None,
                        help="most updates (early stopping may end sooner); default 200 (paper: 1000)")
    parser.add_argument("--rho", type=float, default=None,
                        help="absolute SAM radius ρ (0 = plain Adam; the paper's 0.07 is ~1 %% of ‖λ‖ on the zoo); "
                             "default: set by --rho-relative; ignored by AdaMerging")
    parser.add_argument("--rho-relative", type=float, default=None,
                        help="SAM radius as a fraction of ‖λ‖ (default 0.05: ‖ε‖ ≈ 5 %% of ‖λ‖)")
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate on λ (default 1e-2)")
    parser.add_argument("--holdout", type=float, default=None,
                        help="fraction of each task's inputs kept aside for early stopping (0 = none); default 0.25 "
                             "(paper: 0)")
    parser.add_argument("--patience", type=int, default=None,
                        help="held-out evaluations (every 10 steps) without improvement before stopping; 0 = never")
    parser.add_argument("--sam-mode", choices=("true", "repo"), default="true",
                        help="true: gradient at θ(λ+ε) (default); repo: the research code's cached θ(λ) (= Adam)")
    parser.add_argument("--sam", choices=("adaptive", "standard"), default="adaptive",
                        help="ASAM (ε scaled by |λ|, default) or standard SAM")
    parser.add_argument("--granularity", choices=("layer", "task"), default="layer")
    parser.add_argument("--init", default="auto",
                        help="initial coefficient, or auto (default): the best constant start by the training loss "
                             "(AdaMerging's paper: 0.3; the SAMerging code: 0)")
    parser.add_argument("--temperature", type=float, default=2.0, help="distillation temperature (SAMerging)")
    parser.add_argument("--top-k", type=int, default=64, help="teacher probabilities kept per LM position")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="length of the teachers' LM continuations")
    parser.add_argument("--device", default="cpu", help="cpu or cuda; default cpu")
    parser.add_argument("--out", required=True, help="folder for recipe.yaml, coefficients and learned.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    experts, inputs, scored = _models_and_inputs(args)
    if args.batch_size < 1:
        raise MergeLabError("--batch-size must be at least 1")
    rho = 0.0 if args.method == "adamerging" else args.rho
    init = _parse_init(args.init)
    if not args.quiet:
        print("Loading the models and computing the teachers' outputs…", file=sys.stderr, flush=True)
    bar = _StepBar(args.steps or default_config(args.method, args.defaults).steps, args.method, quiet=args.quiet)
    try:
        merge = learn_merge(args.method, args.base, experts, inputs, defaults=args.defaults, steps=args.steps, rho=rho,
                            rho_relative=args.rho_relative, lr=args.lr, holdout=args.holdout, patience=args.patience,
                            sam_mode=args.sam_mode, adaptive=args.sam == "adaptive", granularity=args.granularity,
                            init=init, batch_size=args.batch_size, temperature=args.temperature,
                            top_k=args.top_k, max_new_tokens=args.max_new_tokens, device=args.device,
                            progress=bar.update)
    finally:
        bar.close()
    _save_and_report(args, experts, merge, scored, inputs)
    return 0


def _models_and_inputs(args: argparse.Namespace) -> tuple[dict[str, str], dict, dict | None]:
    """(experts, unlabeled inputs per task, scored examples per task or None): from the preset (which also sets
    args.base) or from --base/--expert/--prompts."""
    if args.preset:
        per_task = args.examples_per_task or presets.UNLABELED_PER_TASK
        args.base, experts = presets.resolve_models(args.preset, args.preset_models, allow_pickle=args.allow_pickle)
        inputs, scored = presets.load_data(args.preset, args.preset_data, per_task, args.eval_per_task)
        return experts, inputs, scored
    missing = [f"--{n}" for n in ("base", "expert", "prompts") if not getattr(args, n)]
    if missing:
        raise MergeLabError(f"give {', '.join(missing)} (or --preset glue-bert)")
    experts = _parse_experts(args.expert)
    per_task = args.examples_per_task or 16
    if per_task < 1:
        raise MergeLabError("--examples-per-task must be at least 1")
    return experts, read_inputs(args.prompts, list(experts), per_task), None


class _StepBar:
    """A progress bar over the learning steps (none when quiet), created at the first step so that loading time does
    not count as step time."""

    def __init__(self, steps: int, method: str, *, quiet: bool):
        self.steps, self.method, self.quiet = steps, method, quiet
        self.bar = None

    def update(self, step: int, loss: float) -> None:
        if self.quiet:
            return
        if self.bar is None:
            self.bar = tqdm(total=self.steps, desc=self.method, unit="step", dynamic_ncols=True, initial=step - 1)
        self.bar.update(1)
        self.bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _save_and_report(args: argparse.Namespace, experts: dict[str, str], merge: LearnedMerge,
                     scored: dict | None, inputs: dict) -> None:
    """Write the recipe folder and print what was learned; with a preset, also score the merge (report.json) and say
    how to compare it with its baselines (python -m evaluation compare, which adds the scored set's intervals)."""
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "command", "quiet")}
    recipe = save_learned_merge(merge, args.out, args.base, experts, settings)
    first, last = merge.losses[0], merge.losses[-1]
    print(f"Learned {tuple(merge.coefficients.shape)} coefficients in {merge.seconds:.1f} s "
          f"(loss {first:.4f} → {last:.4f}); recipe: {recipe}")
    print(describe_run(merge))
    if scored is not None:
        report = presets.score(args.base, experts, merge.coefficients, merge.names, scored, device=args.device)
        (Path(args.out) / "report.json").write_text(json.dumps(report, indent=1))
        print(presets.report_markdown(report))
        print("\nBeside task arithmetic (uniform and task-wise λ) and TIES, each chosen on the same unlabeled inputs, "
              "with 95 % intervals:\n  " + _compare_command(args))


def _compare_command(args: argparse.Namespace) -> str:
    """The `python -m evaluation compare` command that scores this preset run beside its baselines, reading the same
    models and data."""
    words = ["python -m evaluation compare", str(args.out), "--preset", args.preset]
    for flag, value in (("--preset-models", args.preset_models), ("--preset-data", args.preset_data)):
        if value is not None:
            words += [flag, str(value)]
    if args.eval_per_task != 1000:
        words += ["--per-task", str(args.eval_per_task)]
    if args.allow_pickle:
        words.append("--allow-pickle")
    if args.device != "cpu":
        words += ["--device", args.device]
    return " ".join(words + ["--out", str(Path(args.out) / "comparison.json")])


def _parse_init(value: str | float) -> float | str:
    if value == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError:
        raise MergeLabError(f"--init {value!r} must be a number or auto") from None


register_subcommand("learn", "learn merging coefficients (AdaMerging, SAMerging) from unlabeled prompts",
                    add_arguments, run)
