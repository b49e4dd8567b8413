"""python -m zoo build [FAMILY] [--reduced] [--out DIR] [--family lm|classifier|all] [--seed N] [--missing]
python -m zoo train FAMILY [--expert NAME ...]   (real families: re-train the shipped adapters)"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .build import build, ensure_family
from .families import FAMILY_EXPERTS, REAL_FAMILY_BUILDERS, ZOO_DIR, real_family_module


def _build(args: argparse.Namespace) -> int:
    if args.name in REAL_FAMILY_BUILDERS:  # built on demand into the real-zoo folder; prints where
        print(ensure_family(args.name).root)
        return 0
    family = args.name or args.family
    record = build(args.out, tasks_out=args.tasks_out, reduced=args.reduced, family=family, seed=args.seed,
                   only_missing=args.missing)
    print(json.dumps(record, indent=2))
    return 0


def _train(args: argparse.Namespace) -> int:
    module = real_family_module(args.name)
    unknown = sorted(set(args.expert or ()) - set(module.EXPERTS))
    if unknown:
        raise SystemExit(f"{args.name} has no expert {', '.join(unknown)}: choose from {', '.join(module.EXPERTS)}")
    module.train(out=args.out, experts=tuple(args.expert or module.EXPERTS))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zoo", description="Build MergeLab's offline model zoo.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train the tiny families, or build a real family if missing and print its folder")
    b.add_argument("name", nargs="?", choices=(*REAL_FAMILY_BUILDERS, *FAMILY_EXPERTS, "all"), default=None,
                   help="a family to build (default: the tiny families, as --family says)")
    b.add_argument("--reduced", action="store_true", help="tiny sizes and a few steps (seconds; for tests)")
    b.add_argument("--out", type=Path, default=ZOO_DIR, help="zoo folder (default: assets/zoo)")
    b.add_argument("--tasks-out", type=Path, default=None, help="task files folder (default: assets/tasks, "
                   "or OUT/tasks when --out is given)")
    b.add_argument("--family", choices=("lm", "classifier", "all"), default="all")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--missing", action="store_true", help="build only checkpoints that are not there yet")
    b.set_defaults(run=_build)
    t = sub.add_parser("train", help="re-train a real family's shipped adapters (deterministic; minutes of CPU)")
    t.add_argument("name", choices=tuple(REAL_FAMILY_BUILDERS))
    t.add_argument("--out", type=Path, default=None, help="adapter folder (default: the shipped assets/zoo/NAME)")
    t.add_argument("--expert", action="append", help="re-train only this expert (repeatable; default: all)")
    t.set_defaults(run=_train)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    raise SystemExit(main())
