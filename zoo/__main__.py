"""python -m zoo build [--reduced] [--out DIR] [--family lm|classifier|all] [--seed N] [--missing]"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .build import build
from .families import ZOO_DIR


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo", description="Build MergeLab's offline model zoo.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train the families and write checkpoints and task files")
    b.add_argument("--reduced", action="store_true", help="tiny sizes and a few steps (seconds; for tests)")
    b.add_argument("--out", type=Path, default=ZOO_DIR, help="zoo folder (default: assets/zoo)")
    b.add_argument("--tasks-out", type=Path, default=None, help="task files folder (default: assets/tasks, "
                   "or OUT/tasks when --out is given)")
    b.add_argument("--family", choices=("lm", "classifier", "all"), default="all")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--missing", action="store_true", help="build only checkpoints that are not there yet")
    args = parser.parse_args(argv)
    record = build(args.out, tasks_out=args.tasks_out, reduced=args.reduced, family=args.family, seed=args.seed,
                   only_missing=args.missing)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
