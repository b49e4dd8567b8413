"""Does a merge of the tiny LM zoo's math and japanese experts gain the composite skill (japanese_math) that neither
expert has? Trains one design of the family (base + math and japanese experts) under one seed, merges the experts
with the app's own merging (merging.live.LiveMerger over recipes) and scores everything with the app's own evaluation
(evaluation.agreement.Evaluator, exact answers after the last 答え:). Numbers for docs/zoo.md, "Designs tried for the
composite".

    python bench/composition.py --design scratchpad --seed 0 --out /tmp/comp   # one design, one seed: JSON + table
    python bench/composition.py --table /tmp/comp                             # mean over the seeds in a folder

Designs (zoo.lm.LMSettings): `scratchpad` (shipped: every numeric reply restates the prompt, kanji rewritten by the
japanese skill, the sum computed after a restated `=` by the math skill) and `direct` (the same base mixture and
experts, replies `答え: N` only: the composite must happen inside one forward pass). Training is single-threaded and
seeded as the build is; run it under the shared heavy-job lock.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch
from transformers import MistralForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.agreement import Evaluator
from evaluation.tasks import tasks_for_experts, tasks_from_records
from inference.loading import LoadedModel
from merging.live import LiveMerger
from merging.recipe import Recipe
from zoo import lm
from zoo.build import model_seed
from zoo.lm_tasks import lm_splits
from zoo.tasksets import lm_records
from zoo.training import deterministic

TASKS = ("math", "japanese", "japanese_math", "strings")
ALL_EXPERTS = ("math", "japanese", "strings")
# (label, method, weights per expert, params): the app's methods at a few weights and densities, and layer-wise
# recipes (design c: japanese in the lower layers, math in the upper ones; gradients over the 3 layers).
MERGES = [
    ("task_arithmetic 0.5", "task_arithmetic", (0.5, 0.5), {}),
    ("task_arithmetic 0.7", "task_arithmetic", (0.7, 0.7), {}),
    ("task_arithmetic 1.0", "task_arithmetic", (1.0, 1.0), {}),
    ("ties 0.7 d0.5", "ties", (0.7, 0.7), {"density": 0.5}),
    ("ties 1.0 d0.5", "ties", (1.0, 1.0), {"density": 0.5}),
    ("ties 1.0 d0.8", "ties", (1.0, 1.0), {"density": 0.8}),
    ("task_arithmetic math 0.7, japanese 1.0", "task_arithmetic", (0.7, 1.0), {}),
    ("task_arithmetic math 0.5, japanese 1.0", "task_arithmetic", (0.5, 1.0), {}),
    ("task_arithmetic math 0.5, japanese 0.7", "task_arithmetic", (0.5, 0.7), {}),
    ("layer-wise TA (math [0,1], japanese [1,0])", "task_arithmetic", ([0.0, 1.0], [1.0, 0.0]), {}),
    ("layer-wise TA (math [0.5,1], japanese [1,0.5])", "task_arithmetic", ([0.5, 1.0], [1.0, 0.5]), {}),
    # all three experts (math, japanese, strings): the strings vector turned out to help the composite
    ("all three: task_arithmetic 0.6", "task_arithmetic", (0.6, 0.6, 0.6), {}),
    ("all three: task_arithmetic 0.7", "task_arithmetic", (0.7, 0.7, 0.7), {}),
    ("all three: task_arithmetic math 1.0, japanese 0.5, strings 0.5", "task_arithmetic", (1.0, 0.5, 0.5), {}),
    ("all three: task_arithmetic math 1.0, japanese 0.6, strings 0.6", "task_arithmetic", (1.0, 0.6, 0.6), {}),
    ("all three: task_arithmetic math 0.7, japanese 0.5, strings 0.5", "task_arithmetic", (0.7, 0.5, 0.5), {}),
    ("all three: ties 0.7 d0.5", "ties", (0.7, 0.7, 0.7), {"density": 0.5}),
]
DESIGNS = {"scratchpad": {"scratchpad": True}, "direct": {"scratchpad": False}}


def train_family(design: str, seed: int, folder: Path) -> tuple[dict, object]:
    """Base and the three experts of one design, seeded per model as zoo.build seeds them; saved under
    `folder` and loaded from there when already trained (re-scoring costs no training)."""
    settings = replace(lm.LMSettings(), **DESIGNS[design])
    tokenizer = lm.build_tokenizer()
    splits = lm_splits()
    models = {}
    for name in ("base", *ALL_EXPERTS):
        if (folder / name / "model.safetensors").is_file():
            models[name] = MistralForCausalLM.from_pretrained(folder / name, dtype=torch.float32).eval()
            continue
        model_seed_ = model_seed(seed, "lm", name)
        with deterministic(model_seed_):
            if name == "base":
                models[name] = lm.train_base(tokenizer, settings, model_seed_)
            else:
                models[name] = lm.train_expert(models["base"], splits[name], settings, model_seed_, tokenizer)
        lm.save_lm(models[name], tokenizer, folder / name)
    return models, tokenizer


def recipe(method: str, weights: tuple, params: dict) -> Recipe:
    """The merge of the first len(weights) of math, japanese, strings."""
    data = {"merge_method": method, "base_model": "base", "dtype": "float32",
            "models": [{"model": e, "parameters": {"weight": w}} for e, w in zip(ALL_EXPERTS, weights)]}
    if params:
        data["parameters"] = dict(params)
    return Recipe.from_dict(data)


def score_design(design: str, seed: int, out: Path) -> dict:
    """{model or merge label: {task: accuracy}} plus a few composite outputs of each, for one design and seed."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    models, tokenizer = train_family(design, seed, out / f"{design}-{seed}")
    trained = time.perf_counter() - started
    # The task records the build writes (assets/tasks/zoo_lm.jsonl), straight from the current split.
    tasks = tasks_for_experts(tasks_from_records(lm_records()[0], "zoo_lm"), ALL_EXPERTS)
    loaded = {name: LoadedModel(model=m, tokenizer=tokenizer, kind="lm") for name, m in models.items()}
    evaluator = Evaluator(tasks, {e: loaded[e] for e in ALL_EXPERTS})
    results, samples = {}, {}

    def record(label: str, result) -> None:
        results[label] = {t: result.scores[t].accuracy for t in TASKS}
        samples[label] = result.outputs["japanese_math"][:4]

    for name in ("base", *ALL_EXPERTS):
        record(name, evaluator.score(loaded[name]))
    states = {name: m.state_dict() for name, m in models.items()}
    merger = LiveMerger(states["base"], {e: states[e] for e in ALL_EXPERTS},
                        num_layers=models["base"].config.num_hidden_layers, threads=1)
    for label, method, weights, params in MERGES:
        record(label, evaluator.score_state(merger.merge(recipe(method, weights, params))))
    prompts = [e.input for e in tasks.tasks["japanese_math"].examples[:4]]
    return {"design": design, "seed": seed, "train_seconds": round(trained, 1), "scores": results,
            "japanese_math_prompts": prompts, "japanese_math_outputs": samples}


def table(folder: Path) -> str:
    """Mean (min-max) accuracy per design and model over the seeds' JSON files in `folder`, as markdown."""
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    grouped: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    seeds = defaultdict(list)
    for run in runs:
        seeds[run["design"]].append(run["seed"])
        for label, row in run["scores"].items():
            for task, value in row.items():
                grouped[run["design"]][label][task].append(100 * value)
    lines = []
    for design, rows in grouped.items():
        lines += [f"\n{design} (seeds {sorted(seeds[design])}): mean (min-max) accuracy, %",
                  "| model | " + " | ".join(TASKS) + " |", "|---" * (len(TASKS) + 1) + "|"]
        for label, row in rows.items():
            cells = [f"{statistics.mean(v):.0f} ({min(v):.0f}-{max(v):.0f})" if v else "–"
                     for v in (row[t] for t in TASKS)]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--design", choices=sorted(DESIGNS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/mergelab-composition"))
    parser.add_argument("--table", type=Path, help="print the table of the runs in this folder and exit")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    result = score_design(args.design, args.seed, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.design}-{args.seed}.json").write_text(json.dumps(result, ensure_ascii=False, indent=1))
    print(json.dumps(result["scores"], indent=1))
    print(json.dumps(result["japanese_math_outputs"], ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
