"""`python -m merging learn`: learn layer-wise (or task-wise) merging coefficients and write a recipe folder.

    python -m merging learn --method samerging --base DIR --expert math=DIR --expert japanese=DIR \
        --prompts unlabeled.jsonl --examples-per-task 16 --steps 100 --out RECIPE_DIR

The prompts file is a task-set JSONL (`task`, `prompt` or `text`, `expert`): lines owned by expert NAME are that
expert's unlabeled inputs; lines whose expert is null (composite tasks) are not used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from merging.cli import register_subcommand
from merging.errors import MergeLabError, TaskSetError


def read_inputs(path: str | Path, experts: list[str], per_task: int) -> dict[str, list[str]]:
    """The first `per_task` prompts (or texts) of each expert in a task-set JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise TaskSetError(f"prompts file {path} does not exist: pass a task-set JSONL file to --prompts")
    inputs: dict[str, list[str]] = {e: [] for e in experts}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TaskSetError(f"{path}:{number} is not valid JSON ({e.msg}): one JSON object per line") from None
        text = row.get("prompt", row.get("text")) if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise TaskSetError(f"{path}:{number} has no `prompt` or `text` string: every line needs one")
        owner = row.get("expert")
        if owner in inputs and len(inputs[owner]) < per_task:
            inputs[owner].append(text)
    short = {e: len(v) for e, v in inputs.items() if len(v) < per_task}
    if short:
        raise TaskSetError(
            f"{path} has fewer than {per_task} examples for {short} (counted by the `expert` field): lower "
            "--examples-per-task or check that the expert names given to --expert match the file"
        )
    return inputs


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
    parser.add_argument("--base", required=True, help="base model folder (the experts' common ancestor)")
    parser.add_argument("--expert", action="append", required=True, metavar="NAME=DIR",
                        help="an expert and its task name in the prompts file; repeat for each expert")
    parser.add_argument("--prompts", required=True, help="task-set JSONL with unlabeled prompts/texts per expert")
    parser.add_argument("--examples-per-task", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16, help="examples per task in each step; default 16")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rho", type=float, default=None,
                        help="SAM radius (SAMerging default 0.07; 0 = plain Adam); ignored by AdaMerging")
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate on λ (default 1e-3)")
    parser.add_argument("--sam-mode", choices=("true", "repo"), default="true",
                        help="true: gradient at θ(λ+ε) (default); repo: the research code's cached θ(λ) (= Adam)")
    parser.add_argument("--sam", choices=("adaptive", "standard"), default="adaptive",
                        help="ASAM (ε scaled by |λ|, default) or standard SAM")
    parser.add_argument("--granularity", choices=("layer", "task"), default="layer")
    parser.add_argument("--init", type=float, default=0.3, help="initial coefficient (AdaMerging 0.3; SAMerging code 0)")
    parser.add_argument("--temperature", type=float, default=2.0, help="distillation temperature (SAMerging)")
    parser.add_argument("--top-k", type=int, default=64, help="teacher probabilities kept per LM position")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="length of the teachers' LM continuations")
    parser.add_argument("--device", default="cpu", help="cpu or cuda; default cpu")
    parser.add_argument("--out", required=True, help="folder for recipe.yaml, coefficients and learned.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from merging.learned.api import learn_merge, save_learned_merge

    experts = _parse_experts(args.expert)
    if args.examples_per_task < 1 or args.batch_size < 1:
        raise MergeLabError("--examples-per-task and --batch-size must be at least 1")
    inputs = read_inputs(args.prompts, list(experts), args.examples_per_task)
    rho = 0.0 if args.method == "adamerging" else args.rho
    bar = None
    if not args.quiet:
        print("Loading the models and computing the teachers' outputs…", file=sys.stderr, flush=True)

    def progress(step: int, loss: float) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:  # created at the first step so that loading time does not count as step time
            bar = tqdm(total=args.steps, desc=args.method, unit="step", dynamic_ncols=True, initial=step - 1)
        bar.update(1)
        bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)

    try:
        merge = learn_merge(args.method, args.base, experts, inputs, steps=args.steps, rho=rho, lr=args.lr,
                            sam_mode=args.sam_mode, adaptive=args.sam == "adaptive", granularity=args.granularity,
                            init=args.init, batch_size=args.batch_size, temperature=args.temperature,
                            top_k=args.top_k, max_new_tokens=args.max_new_tokens, device=args.device,
                            progress=progress)
    finally:
        if bar is not None:
            bar.close()
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "command", "quiet")}
    recipe = save_learned_merge(merge, args.out, args.base, experts, settings)
    first, last = merge.losses[0], merge.losses[-1]
    print(f"Learned {tuple(merge.coefficients.shape)} coefficients in {merge.seconds:.1f} s "
          f"(loss {first:.4f} → {last:.4f}); recipe: {recipe}")
    return 0


register_subcommand("learn", "learn merging coefficients (AdaMerging, SAMerging) from unlabeled prompts",
                    add_arguments, run)
