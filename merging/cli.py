"""Command line: `python -m merging run RECIPE.yaml OUT_DIR`, `python -m merging check RECIPE.yaml`.

Subcommands live in `SUBCOMMANDS` (name -> Subcommand). Another module adds its own by calling
`merging.cli.register_subcommand(...)` at import and being listed in `EXTENSIONS` (imported only if present; the
registry is here, not in __main__, so that importing it never runs a second copy of the entry point).
User errors (MergeLabError) print one paragraph and exit
with status 2; a cancelled merge (Ctrl-C) exits 130 and leaves nothing behind.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from merging.errors import MergeCancelled, MergeLabError

EXIT_USER_ERROR = 2
EXIT_CANCELLED = 130
# Modules that register more subcommands (e.g. `learn`); a missing one is skipped.
EXTENSIONS = ("merging.learned.cli",)


@dataclass(frozen=True)
class Subcommand:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


SUBCOMMANDS: dict[str, Subcommand] = {}


def register_subcommand(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None],
                        run: Callable[[argparse.Namespace], int]) -> None:
    """Add `python -m merging NAME`; `run(args)` returns the exit status and may raise MergeLabError."""
    SUBCOMMANDS[name] = Subcommand(help, add_arguments, run)


# --- run ------------------------------------------------------------------------------------------------------


def _run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="mergekit-style YAML recipe")
    parser.add_argument("out_dir", help="folder to write the merged model to (must not exist or be empty)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N); default cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed for random methods (DARE, DELLA); default 0")
    parser.add_argument("--shard-size", default="2GB", help="largest output shard, e.g. 2GB, 500MB; default 2GB")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists (once complete)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read models that only have pickle (*.bin) weights, with torch.load(weights_only=True)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from merging.engine import MergeProgress, merge_to_folder

    bar = None

    def progress(p: MergeProgress) -> None:
        nonlocal bar
        if args.quiet:
            return
        if bar is None:
            bar = tqdm(total=p.bytes_total, unit="B", unit_scale=True, desc="merging", dynamic_ncols=True)
        bar.update(p.bytes_done - bar.n)
        bar.set_postfix_str(f"tensor {p.tensor_index}/{p.num_tensors}", refresh=False)

    try:
        result = merge_to_folder(args.recipe, args.out_dir, device=args.device, seed=args.seed,
                                 shard_size=args.shard_size, progress=progress, overwrite=args.overwrite,
                                 allow_pickle=args.allow_pickle)
    finally:
        if bar is not None:
            bar.close()
    busy = ", ".join(f"{stage} {seconds:.1f} s" for stage, seconds in result.stage_seconds.items())
    print(f"Merged {result.num_tensors} tensors in {result.seconds:.1f} s into {result.out_dir} "
          f"({result.bytes_written / 1e6:.1f} MB, {result.out_dtype}; busy: {busy}).")
    for note in result.notes:
        print(f"note: {note}")
    return 0


# --- check ----------------------------------------------------------------------------------------------------


def _check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="mergekit-style YAML recipe")
    parser.add_argument("--out-dir", default=None, help="where the merge would be written (checks free disk)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda; memory is checked on that device")
    parser.add_argument("--allow-pickle", action="store_true", help="accept models with only pickle weights")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def _check(args: argparse.Namespace) -> int:
    from merging.preflight import preflight

    report = preflight(args.recipe, out_dir=args.out_dir, device=args.device, allow_pickle=args.allow_pickle)
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else report.to_markdown())
    return 0 if report.ok else 1


register_subcommand("run", "merge a recipe into a model folder", _run_arguments, _run)
register_subcommand("check", "pre-flight check of a recipe: compatibility, memory, disk, time", _check_arguments,
                    _check)


# --- entry point ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    for module in EXTENSIONS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # the extension exists but is broken: say so rather than hide it
                raise
    parser = argparse.ArgumentParser(prog="python -m merging", description="MergeLab model merging.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, command in SUBCOMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.help, description=command.help))
    return parser


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so `kill` cleans up like Ctrl-C: the temporary output folder is removed


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt_on_sigterm) if in_main_thread else None
    try:
        return SUBCOMMANDS[args.command].run(args)
    except MergeCancelled as exc:
        print(f"Cancelled: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        print("Cancelled; nothing was written.", file=sys.stderr)
        return EXIT_CANCELLED
    except MergeLabError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
