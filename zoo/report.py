"""Measures the zoo for docs/zoo.md and the tests: every model's score on every task it can answer, and a plain
task-arithmetic merge (base + λ·Σ task vectors) to show the trade-off merging has to manage.

    python -m zoo.report [ZOO_DIR]   # prints the markdown tables (default: the shipped assets/zoo)
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from .families import BASE_NAME, Family, families
from .scoring import classifier_accuracy, lm_accuracy
from .tasksets import read_jsonl


def by_task(path: Path) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for record in read_jsonl(path):
        grouped[record["task"]].append(record)
    return dict(grouped)


def load_lm(folder: Path):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), AutoTokenizer.from_pretrained(folder)


def load_classifier(folder: Path):
    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(folder)


def task_arithmetic(base: dict[str, torch.Tensor], experts: list[dict[str, torch.Tensor]], weight: float) -> dict:
    """base + weight · Σ (expert − base) over the tensors the base has (heads are left to each expert)."""
    return {name: w + weight * sum(e[name] - w for e in experts) for name, w in base.items()
            if all(name in e for e in experts)}


def lm_scores(family: Family, weights: tuple[float, ...] = (1.0, 0.5, 0.3)) -> dict[str, dict[str, float]]:
    """Base and experts on every task, then task arithmetic of all experts and of math + japanese (the pair the
    composite task needs) at each weight."""
    tasks = by_task(family.tasks)
    scores, states = {}, {}
    for name, folder in family.models().items():
        model, tokenizer = load_lm(folder)
        states[name] = {k: v.clone() for k, v in model.state_dict().items()}
        scores[name] = {task: lm_accuracy(model, tokenizer, examples) for task, examples in tasks.items()}
    for combo in (tuple(family.experts), ("math", "japanese")):
        for weight in weights:
            model.load_state_dict(task_arithmetic(states[BASE_NAME], [states[e] for e in combo], weight))
            label = f"task arithmetic {'+'.join(combo)}, λ={weight}"
            scores[label] = {t: lm_accuracy(model, tokenizer, ex) for t, ex in tasks.items()}
    return scores


def classifier_scores(family: Family, weights: tuple[float, ...] = (1.0, 0.5, 0.3)) -> dict[str, dict[str, float]]:
    """Each expert on its own task (a head answers only its task); merges read task t through expert t's head."""
    tasks = by_task(family.tasks)
    base_state = AutoModelForSequenceClassification.from_pretrained(family.base, dtype=torch.float32).state_dict()
    loaded = {name: load_classifier(folder) for name, folder in family.experts.items()}
    scores: dict[str, dict[str, float]] = {}
    for name, (model, tokenizer) in loaded.items():
        scores[name] = {name: classifier_accuracy(model, tokenizer, tasks[name])}
    expert_states = [{k: v.clone() for k, v in m.state_dict().items()} for m, _ in loaded.values()]
    for weight in weights:
        merged = task_arithmetic({k: v for k, v in base_state.items() if not k.startswith("classifier.")},
                                 expert_states, weight)
        row = {}
        for (name, (model, tokenizer)), own in zip(loaded.items(), expert_states):
            model.load_state_dict({**own, **merged})
            row[name] = classifier_accuracy(model, tokenizer, tasks[name])
            model.load_state_dict(own)
        scores[f"task arithmetic of all four, λ={weight}"] = row
    return scores


def markdown_table(scores: dict[str, dict[str, float]], tasks: list[str]) -> str:
    lines = ["| model | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for model, row in scores.items():
        cells = [f"{100 * row[t]:.0f} %" if t in row else "—" for t in tasks]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    torch.set_num_threads(1)  # tiny models decode far faster on one thread than on contended cores
    zoo_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    fams = families(zoo_dir)
    lm = lm_scores(fams["lm"])
    print(markdown_table(lm, list(by_task(fams["lm"].tasks))))
    print()
    cls = classifier_scores(fams["classifier"])
    print(markdown_table(cls, list(by_task(fams["classifier"].tasks))))


if __name__ == "__main__":
    main()
