"""Command line: `python -m merging run RECIPE.yaml OUT_DIR`, `python -m merging check RECIPE.yaml`.

Subcommands live in `SUBCOMMANDS` (name -> Subcommand). Another module adds its own by calling
`merging.cli.register_subcommand(...)` at import and being listed in `EXTENSIONS` (imported by name when the
parser is built; the registry is here, not in __main__, so that importing it never runs a second copy of the entry
point).
Exit codes (the CLI contract, also in `--help` and DEVELOPERS.md): see EXIT_CODES_HELP. User errors print one
short paragraph (`Error: ...`); anything unexpected prints a one-line internal-error message, with the traceback only
under `--debug` or MERGELAB_DEBUG=1.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from tqdm import tqdm

import merging.preflight
from merging.engine import MergeProgress, merge_to_folder
from merging.errors import MergeCancelled, MergeLabError

EXIT_OK = 0
EXIT_PROBLEMS = 1  # `check`: the recipe or its models have problems (listed in the report)
EXIT_USER_ERROR = 2  # bad arguments, or input that cannot be used (a MergeLabError); nothing was written
EXIT_INTERNAL_ERROR = 3  # a bug in MergeLab: rerun with --debug for the traceback
EXIT_CANCELLED = 130  # Ctrl-C or SIGTERM; nothing was written
EXIT_CODES_HELP = """exit status:
  0    success (check: the recipe can be merged)
  1    check found problems in the recipe or its models (listed in its report)
  2    usage error or unusable input (bad arguments, a recipe or model that cannot be used, an output folder
       that cannot be written); nothing was written
  3    internal error (a bug in MergeLab); rerun with --debug, or MERGELAB_DEBUG=1, for the traceback
  130  cancelled (Ctrl-C or SIGTERM); nothing was written"""
DEBUG_ENV = "MERGELAB_DEBUG"
MAX_MESSAGE_CHARS = 8000  # a message longer than this is cut (messages are meant to be a paragraph)
# Modules that register more subcommands (`learn`): they import this module, so it imports them late, by name.
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
    # looked up through the module at call time, so tests can patch it
    report = merging.preflight.preflight(args.recipe, out_dir=args.out_dir, device=args.device,
                                         allow_pickle=args.allow_pickle)
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else report.to_markdown())
    return EXIT_OK if report.ok else EXIT_PROBLEMS


register_subcommand("run", "merge a recipe into a model folder", _run_arguments, _run)
register_subcommand("check", "pre-flight check of a recipe: compatibility, memory, disk, time", _check_arguments,
                    _check)


# --- entry point ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    for module in EXTENSIONS:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(prog="python -m merging", description="MergeLab model merging.",
                                     epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help=f"show tracebacks of internal errors (or {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name, command in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=command.help, description=command.help, epilog=EXIT_CODES_HELP,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_arguments(sub_parser)
        sub_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                help="show tracebacks of internal errors")
    return parser


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so `kill` cleans up like Ctrl-C: the temporary output folder is removed


def _debug_requested(args: argparse.Namespace | None) -> bool:
    flag = os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
    return flag or bool(getattr(args, "debug", False))


def _say(message: str) -> None:
    """One message on stderr, cut to MAX_MESSAGE_CHARS."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + f"… ({len(message) - MAX_MESSAGE_CHARS} more characters cut)"
    print(message, file=sys.stderr)


_OS_ERROR_FIXES = {
    errno.ENAMETOOLONG: "a file or folder name is too long for the file system (most allow 255 bytes per name): "
                        "shorten it",
    errno.ENOSPC: "the disk is full: free space or write somewhere else",
    errno.EDQUOT: "the disk quota is exhausted: free space or write somewhere else",
    errno.EACCES: "permission denied: choose a location you can write to, or fix its permissions",
    errno.EPERM: "operation not permitted: choose another location",
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.ENOTDIR: "a part of the path is a file, not a folder: fix the path",
    errno.EISDIR: "a folder was given where a file is needed: fix the path",
    errno.ENOENT: "no such file or folder: check the path",
}


def describe_os_error(exc: OSError) -> str:
    """An OSError as one line: what failed, on which file, and what to do."""
    where = f" {exc.filename!r}" if exc.filename else ""
    if getattr(exc, "filename2", None):
        where += f" -> {exc.filename2!r}"
    fix = _OS_ERROR_FIXES.get(exc.errno, "check the path, the permissions and the free disk space")
    return f"cannot use{where}: {exc.strerror or exc}; {fix}."


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand and return its exit status (see EXIT_CODES_HELP); never raises except SystemExit from
    argparse (status 2 for usage errors, 0 for --help)."""
    args = None
    previous = None
    try:
        args = build_parser().parse_args(argv)
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
        return SUBCOMMANDS[args.command].run(args)
    except MergeCancelled as exc:
        _say(f"Cancelled: {exc}")
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        _say("Cancelled; nothing was written.")
        return EXIT_CANCELLED
    except MergeLabError as exc:
        _say(f"Error: {exc}")
        return EXIT_USER_ERROR
    except OSError as exc:  # the environment refused: names too long, a full disk, a read-only folder, ...
        _say(f"Error: {describe_os_error(exc)}")
        return EXIT_USER_ERROR
    except MemoryError:
        _say("Error: out of memory. Merge on a machine with more memory, or fewer or smaller models at a time.")
        return EXIT_USER_ERROR
    except Exception as exc:  # noqa: BLE001 - the last line of defence: a short message, not a traceback
        if _debug_requested(args):
            traceback.print_exc()
        detail = str(exc)[:300]
        _say(f"Internal error ({type(exc).__name__}{': ' + detail if detail else ''}). This is a bug in MergeLab: "
             f"rerun with --debug (or {DEBUG_ENV}=1) for the traceback and report it.")
        return EXIT_INTERNAL_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
