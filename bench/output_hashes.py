"""Hashes of what every merge method writes, to show a refactoring changed no output (issue 21's "no behaviour
change": engine and LiveMerger outputs bit-identical before/after).

For every registered method × float32/bf16/fp16 sources: a tiny Mistral family (base and two experts, hidden 384,
so the MLP tensors are large enough for the fused path, merging/methods/fused.py), a recipe made from the method's
declaration alone (two inputs where it takes two, required per-model values 0.6 / 0.4, density 0.5, required global
values 0.3, as tests.factory.declared_recipe), then
- the engine's folder (merging.engine.merge_to_folder, seed 3),
- LiveMerger.merge twice and merge_into twice (into float32 parameters: the fused path writes into them, and the
  second call reuses remembered thresholds),
each hashed (SHA-256 over names, dtypes, shapes and bytes). Prints one line per case; `--out FILE` writes them as
JSON, `--compare FILE` exits 1 naming every case that differs from an earlier run.

    .venv/bin/python bench/output_hashes.py --out /tmp/before.json
    .venv/bin/python bench/output_hashes.py --compare /tmp/before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DTYPES = ("float32", "bfloat16", "float16")


def digest(state: dict) -> str:
    """SHA-256 of a state dict: names in order, dtype, shape and raw bytes of each tensor."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()[:16]


def read(folder: Path) -> dict:
    from merging.sources import open_model

    with open_model(folder) as source:
        return {name: source.get(name) for name in source.tensor_names()}


def hashes(work: Path) -> dict[str, str]:
    """case → hash, for every method × dtype × (engine, live merge ×2, live merge_into ×2)."""
    import torch

    from merging.engine import merge_to_folder
    from merging.live import LiveMerger
    from merging.methods.registry import list_methods
    from tests.factory import declared_recipe, make_family

    out: dict[str, str] = {}
    for dtype in DTYPES:
        family = make_family(work / dtype, dtype=getattr(torch, dtype), hidden=384, layers=2, seed=4)
        base, experts = str(family.base), [str(p) for p in family.experts]
        states = {p: read(Path(p)) for p in [base, *experts]}
        live = LiveMerger(states[base], {p: states[p] for p in experts}, num_layers=2)
        for method in list_methods():
            recipe = declared_recipe(method, base, experts)
            case = f"{method.name}/{dtype}"
            merge_to_folder(recipe, work / "out", seed=3, overwrite=True)
            out[f"{case}/engine"] = digest(read(work / "out"))
            for k in (1, 2):
                out[f"{case}/live.merge{k}"] = digest(live.merge(recipe, seed=3))
            target = {n: torch.zeros(t.shape, dtype=torch.float32) for n, t in states[base].items()}
            for k in (1, 2):
                live.merge_into(target, recipe, seed=3)
                out[f"{case}/live.merge_into{k}"] = digest(target)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the hashes as JSON")
    parser.add_argument("--compare", type=Path, help="compare with an earlier --out; exit 1 on any difference")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        found = hashes(Path(work))
    for case, value in found.items():
        print(f"{value}  {case}")
    if args.out:
        args.out.write_text(json.dumps(found, indent=1), encoding="utf-8")
    if args.compare:
        before = json.loads(args.compare.read_text(encoding="utf-8"))
        differ = [c for c in sorted(set(before) | set(found)) if before.get(c) != found.get(c)]
        print(f"\n{len(found)} cases; {len(differ)} differ from {args.compare}" + "".join(f"\n  {c}" for c in differ))
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
