"""Would the SmolLM2 family lose anything stored in bf16? Each model of the family (base and experts) and a task
arithmetic merge of the experts are scored on the family's task set twice, side by side in one run: with the weights
as the family stores them (float32) and rounded to bf16 (what a bf16 folder holds; computed in float32 either way,
as the page does on a CPU). Prints accuracy per task, the share of answers that change, and how far rounding moves
each expert's task vector. Never run in CI (minutes of CPU; run it under the heavy-job lock).

    .venv/bin/python bench/bench_bf16_family.py [--root FAMILY_ROOT] [--per-task N] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch
from machine import machine  # bench/machine.py (this folder is on sys.path when a script runs)
from safetensors.torch import load_file

from evaluation.agreement import accuracy
from evaluation.scoring import expected_answers, generate_tasks
from evaluation.tasks import load_tasks
from inference import load_model

EXPERTS = ("math", "japanese", "strings")
MERGE_WEIGHT = 0.5  # task arithmetic, every expert at this weight


def rounded(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors as a bf16 folder holds them, back in float32."""
    return {k: v.to(torch.bfloat16).to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}


def merged(base: dict[str, torch.Tensor], experts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: base[k] + sum(MERGE_WEIGHT * (e[k] - base[k]) for e in experts) for k in base}


def task_vector_shift(base: dict[str, torch.Tensor], expert: dict[str, torch.Tensor]) -> float:
    """‖τ_bf16 − τ_fp32‖ / ‖τ_fp32‖ over the tensors the expert changes (τ = expert − base, each stored as given)."""
    low_base, low_expert = rounded(base), rounded(expert)
    num = den = 0.0
    for k, value in base.items():
        tau = expert[k] - value
        if not torch.any(tau):
            continue
        num += float(((low_expert[k] - low_base[k]) - tau).double().pow(2).sum())
        den += float(tau.double().pow(2).sum())
    return (num / den) ** 0.5 if den else 0.0


def score(model, tokenizer, state: dict[str, torch.Tensor], tasks) -> dict[str, tuple[float | None, list]]:
    model.load_state_dict(state, strict=False)
    outputs = generate_tasks(model, tokenizer, list(tasks.tasks.values()))
    return {name: (accuracy(out.answers, expected_answers(tasks.tasks[name])), out.answers)
            for name, out in outputs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="the family folder (default: the zoo's smollm2)")
    parser.add_argument("--per-task", type=int, default=None, help="only the first N examples of each task")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.root is None:
        from zoo.build import ensure_family
        args.root = ensure_family("smollm2").root
    tasks = load_tasks(args.root / "tasks.jsonl").limited(args.per_task)
    loaded = load_model(args.root / "base", device="cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    states = {name: load_file(str(args.root / name / "model.safetensors")) for name in ("base", *EXPERTS)}
    states["merge"] = merged(states["base"], [states[e] for e in EXPERTS])
    low = {name: rounded(state) for name, state in states.items()}
    low["merge"] = merged(low["base"], [low[e] for e in EXPERTS])  # the merge of bf16 folders
    print(f"# {machine()}; {time.strftime('%Y-%m-%d %H:%M')}; {sum(len(t.examples) for t in tasks.tasks.values())} "
          f"examples, {len(tasks.tasks)} tasks; threads {args.threads}")
    for expert in EXPERTS:
        print(f"task vector of {expert}: bf16 rounding moves it by {task_vector_shift(states['base'], states[expert]):.1%}")
    print("| model | task | accuracy float32 | accuracy bf16 | answers changed |")
    print("|---|---|---|---|---|")
    for name, state in states.items():
        started = time.perf_counter()
        full, half = score(model, tokenizer, state, tasks), score(model, tokenizer, low[name], tasks)
        for task, (acc, answers) in full.items():
            changed = sum(a != b for a, b in zip(answers, half[task][1])) / max(1, len(answers))
            print(f"| {name} | {task} | {acc:.0%} | {half[task][0]:.0%} | {changed:.0%} |")
        print(f"<!-- {name}: {time.perf_counter() - started:.0f} s -->", flush=True)


if __name__ == "__main__":
    main()
