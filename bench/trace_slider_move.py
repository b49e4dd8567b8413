"""Follow one Merge-tab slider move through the code: which project files it enters, in order (issue 21's "Done
when": one slider move enters each file at most twice).

The page is built as app.py builds it and a family's pair checked as the Models tab does (the tiny zoo's LM pair, or
`--family smollm2`: the SmolLM2 family as `python -m zoo build smollm2` builds it into ./models, whose tensors are
large enough for the fused kernels); the first merge (which makes the chat model) and one untraced move run first,
so the traced move is a steady-state re-merge. The traced call is the handler the page wires to the weight sliders
(ui/page.py's `follow_controls`, found among the page's events by name) with the controls' values and a browser
stamp, as the page sends them.

The trace follows the running frame (sys.setprofile, this thread). Two counts per file:
- *entered*: a call from another file (or from outside, for the handler) into one of this file's functions. A
  generator resumed (a `with` block's exit through contextlib) is the same entry, not a new one. Returns into a
  file from the files it called are not entries: they are the next count's.
- *stays*: stretches of execution in the file (its calls into torch or the standard library stay with it; a call
  into another project file ends one, and the return from it starts another). A file that makes k calls into
  other files has k + 1 stays at least: this is the stricter reading that issue 21's earlier passes measured.
Project files: under the repository, outside tests/, bench/ and .venv. It follows the code as a reader does: each
call site is followed the first time it runs, and its later runs (the next tensor of the per-tensor loop, the next
model) are skipped with everything they call. `--executed` counts every run instead (then the per-tensor loop
dominates: hundreds of stays per file on the tiny zoo).

    .venv/bin/python bench/trace_slider_move.py            # the stays in order, then both counts per file
    .venv/bin/python bench/trace_slider_move.py --calls    # also each stay's project functions
    .venv/bin/python bench/trace_slider_move.py --family smollm2 --method ties   # the fused path, another method
    .venv/bin/python bench/trace_slider_move.py --leaf merging/methods/registry.py   # lookups stay with the caller
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EXCLUDED = ("tests", "bench", ".venv")
LEAVES: set[str] = set()  # files read like a table (--leaf): a call into one stays with its caller


@dataclass
class Entry:
    """A call from another file (`caller`; None from outside the project) into `function` of `file`."""

    file: str
    function: str
    caller: str | None


@dataclass
class Stay:
    """A stretch of execution in one file and the project functions called during it."""

    file: str
    functions: list[str] = field(default_factory=list)


def project_file(filename: str) -> str | None:
    """The repository-relative path of a project source file; None for anything else."""
    try:
        relative = Path(filename).resolve().relative_to(ROOT)
    except ValueError:
        return None
    if relative.parts[0] in EXCLUDED or relative.suffix != ".py" or relative.as_posix() in LEAVES:
        return None
    return relative.as_posix()


def trace_stays(call: Callable[[], Any], *, as_read: bool = True) -> tuple[Any, list[Stay], list[Entry]]:
    """Run `call()` with a profiler that follows the innermost project frame; returns its result, the stays and
    the entries (calls from another file; a resumed generator frame is not a new entry).
    `as_read`: a call site (the caller's code and call instruction, the callee's code) is followed once; its repeats
    are skipped. The instruction, not the line: `with a(), b():` is two call sites on one line (both go through
    contextlib's __enter__, so keyed by line the second would be skipped as a repeat of the first)."""
    stays: list[Stay] = []
    called: list[Entry] = []
    started: set[Any] = set()  # generator frames entered already (resumed, the same frame: not a new entry)
    names: dict[str, str | None] = {}
    seen: set[tuple[Any, int, Any]] = set()
    skipping: list[Any] = []  # the frame of a repeated call while its subtree is skipped

    def file_of(frame: Any) -> str | None:
        while frame is not None:
            name = frame.f_code.co_filename
            if name not in names:
                names[name] = project_file(name)
            if names[name] is not None:
                return names[name]
            frame = frame.f_back
        return None

    def move_to(where: str | None) -> None:
        if where is not None and (not stays or stays[-1].file != where):
            stays.append(Stay(where))

    def profile(frame: Any, event: str, _arg: Any) -> None:
        if skipping:
            if event == "return" and frame is skipping[0]:
                skipping.clear()
            return
        if event == "call" and as_read and frame.f_back is not None:
            site = (frame.f_back.f_code, frame.f_back.f_lasti, frame.f_code)
            if site in seen:
                skipping.append(frame)
                return
            seen.add(site)
        if event == "call":
            where = file_of(frame)
            move_to(where)
            if where is not None and names[frame.f_code.co_filename] == where:
                stays[-1].functions.append(frame.f_code.co_name)
                caller = file_of(frame.f_back)
                if caller != where and frame not in started:
                    called.append(Entry(where, frame.f_code.co_name, caller))
                if frame.f_code.co_flags & inspect.CO_GENERATOR:  # only a generator's frame runs again
                    started.add(frame)
        elif event == "return":
            move_to(file_of(frame.f_back))

    sys.setprofile(profile)
    try:
        result = call()
    finally:
        sys.setprofile(None)
    return result, stays, called


def slider_move(models_dir: Path, family: str, method: str | None) -> Callable[[float], Callable[[], Any]]:
    """A function giving the page's event for a move of the first weight slider (the page built as app.py
    builds it, the family's math and japanese experts checked, merged once, with `method` when given)."""
    from app import create_app
    from merging.settings import MergeSettings
    from ui import merge_panel, models_panel
    from ui.hosting import HostConfig
    from ui.session import new_session

    config = HostConfig.detect(hosted=False, models_dir=models_dir)
    demo = create_app(config)
    follow = next(block.fn for block in demo.fns.values() if getattr(block.fn, "__name__", "") == "follow_controls")
    session = new_session()
    choice = models_panel.ModelsChoice("Zoo", family, ["math", "japanese"], "", "")
    report = models_panel.check_models(session, config, choice)
    assert "ready to merge" in report, report
    settings = session.merge_settings
    if method is not None and method != settings.method:
        settings = MergeSettings.from_dict({"method": method, "weights": settings.weights, "seed": settings.seed})
    merge_panel.run_merge(session, config, settings.to_dict())  # the first merge: the chat model
    specs = merge_panel.param_specs()
    stamp = [0.0]

    def move(weight: float) -> Callable[[], Any]:
        """The page's event for the first weight slider moved to `weight`, ready to run (the controls' other
        values are what they show now)."""
        updates = merge_panel.session_control_updates(session, specs)
        method, weights, params = updates[0]["value"], updates[2:-1 - len(specs)], updates[-1 - len(specs):-1]
        values = [u.get("value") if isinstance(u, dict) else None for u in [*weights, *params]]
        values[0] = weight
        stamp[0] += 1.0
        seed, sent = session.merge_settings.seed, stamp[0]
        return lambda: follow(session, method, seed, *values, sent)

    return move


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", action="store_true", help="print each stay's project functions")
    parser.add_argument("--executed", action="store_true", help="count every run of a call site, not the first")
    parser.add_argument("--family", choices=("lm", "smollm2"), default="lm",
                        help="lm: the tiny zoo (built in a temporary folder); smollm2: ./models/zoo/smollm2 "
                             "(python -m zoo build smollm2), large enough for the fused kernels")
    parser.add_argument("--method", help="merge with this method (default: the family's preset)")
    parser.add_argument("--leaf", action="append", default=[], metavar="FILE",
                        help="a file read like a table (e.g. merging/methods/registry.py): calls into it stay with "
                             "the caller")
    args = parser.parse_args(argv)
    LEAVES.update(args.leaf)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        move = slider_move(Path(scratch) if args.family == "lm" else ROOT / "models", args.family, args.method)
        move(0.6)()  # untraced: first-call imports and caches out of the way
        status, stays, called = trace_stays(move(0.7), as_read=not args.executed)
    assert "Merged" in status, status
    stay_counts, entered = Counter(stay.file for stay in stays), Counter(entry.file for entry in called)
    how = "every call run" if args.executed else "each call site followed once"
    print(f"one weight-slider move ({args.family}, {status.split('**')[1]}; ui/page.py follow_controls → live "
          f"re-merge; {how}): {len(called)} entries and {len(stays)} stays in {len(stay_counts)} files, "
          f"{len(stays) - len(stay_counts)} returns to a file already left")
    for k, stay in enumerate(stays, 1):
        calls = f"  {', '.join(stay.functions)}" if args.calls and stay.functions else ""
        print(f"{k:3d}. {stay.file}{calls}")
    print("\nper file: entered (calls in from another file: which functions, from where), stays")
    for file, count in stay_counts.most_common():
        into = ", ".join(f"{e.function} ({e.caller or 'the page'})" for e in called if e.file == file)
        print(f"  {entered[file]:3d} {'(more than twice)' if entered[file] > 2 else '':17s} {count:3d}  {file}: {into}")
    over_entered = sum(1 for n in entered.values() if n > 2)
    over_stays = sum(1 for n in stay_counts.values() if n > 2)
    print(f"\nfiles entered more than twice: {over_entered}; files with more than two stays: {over_stays}")


if __name__ == "__main__":
    main()
