"""The experiments behind docs/learned-merging.md, scored on prompts disjoint from those learned on, over several
disjoint draws of the unlabeled inputs, with standard errors.

    .venv/bin/python bench/learned_experiments.py heldout --family lm [--draws 3] [--examples 16] [--steps 200]
    .venv/bin/python bench/learned_experiments.py rho --family lm [--rhos 0,0.02,0.05,0.1,0.2] [--draws 3]
    .venv/bin/python bench/learned_experiments.py sharp --family minilm [--examples 2] [--draws 3]

Families: lm / classifier (the shipped tiny zoo), minilm / smollm2 (real families, built on demand by zoo).
Draw d learns from the unlabeled inputs d·N … (d+1)·N − 1 of each expert (N = --examples; SAMerging and AdaMerging
keep a quarter of them aside for early stopping). Every merge is scored on the family's task file, which shares no
prompt with the unlabeled file:
- agreement: the merged model's answer equals the task's own expert's (evaluation.Evaluator.score_state on the
  state LiveMerger builds from the learned recipe, the product's own path);
- held-out KL: mean KL(expert ‖ merge) at temperature 1 over the scored prompts (LM: at the positions of the expert's
  greedy answer; classifiers: the task's head);
- held-out NLL: −log p_merge(the expert's own prediction) over the same rows.
Means ± standard error over draws (data-free merges do not depend on the draw: one value). Prints markdown rows;
--json writes every number.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zoo
from evaluation.agreement import Evaluator
from evaluation.tasks import load_tasks
from inference.loading import load_model
from merging.learned.adapters import read_state, setup_causal_lm, setup_classifier
from merging.learned.api import learn_merge, learn_summary
from merging.learned.recipe_io import recipe_dict
from merging.live import LiveMerger
from merging.recipe import Recipe

TA_GRID = (0.3, 0.5, 0.7, 1.0)
BASE = "base"


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return m, math.sqrt(var / len(values))


class FamilyBench:
    """One family loaded once: experts, evaluator (expert answers cached), LiveMerger, the scored prompts' teacher
    targets for the held-out KL/NLL, and the unlabeled inputs."""

    def __init__(self, family: zoo.Family, score_per_task: int | None = None) -> None:
        self.family = family
        self.experts = {name: load_model(path, dtype="float32") for name, path in family.experts.items()}
        tasks = load_tasks(family.tasks)
        if score_per_task:
            tasks = tasks.limited(score_per_task)
        self.evaluator = Evaluator(tasks, self.experts)
        self.evaluator.expert_predictions()
        base = read_state(family.base)
        states = {name: read_state(path) for name, path in family.experts.items()}
        num_layers = self.experts[next(iter(self.experts))].model.config.num_hidden_layers
        self.merger = LiveMerger(base, states, num_layers=num_layers)
        self.unlabeled = [json.loads(line) for line in family.unlabeled.read_text(encoding="utf-8").splitlines()]
        scored = {e: [] for e in family.experts}
        for task in tasks.tasks.values():
            if task.expert in scored:
                scored[task.expert] += [ex.input for ex in task.examples]
        setup = setup_causal_lm if family.kind == "lm" else setup_classifier
        self.scored = setup(family.base, family.experts, scored, batch_size=64, temperature=1.0,
                            **({"top_k": 64} if family.kind == "lm" else {}))
        self.scored_counts = {e: len(v) for e, v in scored.items()}

    def inputs(self, per_task: int, draw: int) -> dict[str, list[str]]:
        """Inputs draw·per_task … (draw+1)·per_task − 1 of each expert's unlabeled lines."""
        rows: dict[str, list[str]] = {e: [] for e in self.family.experts}
        for row in self.unlabeled:
            if row.get("expert") in rows:
                rows[row["expert"]].append(row.get("prompt", row.get("text")))
        short = {e: len(v) for e, v in rows.items() if len(v) < (draw + 1) * per_task}
        if short:
            raise SystemExit(f"draw {draw} of {per_task} needs {(draw + 1) * per_task} unlabeled inputs per expert; "
                             f"{short} have fewer")
        return {e: v[draw * per_task:(draw + 1) * per_task] for e, v in rows.items()}

    @torch.no_grad()
    def heldout_kl_nll(self, lam: torch.Tensor, names: list[str] | None = None) -> tuple[float, float]:
        """Mean over tasks of the held-out KL(expert ‖ merge) and NLL of the expert's prediction, at θ(λ)."""
        vectors = self.scored.vectors
        if names is not None and list(names) != list(vectors.names):
            raise RuntimeError("learned tensor names differ from the scoring setup's")
        vectors.materialize(lam, self.scored.params)
        kls, nlls = [], []
        for t in range(len(self.scored.tasks)):
            kl_sum = nll_sum = rows = 0.0
            for b in range(len(self.scored.teachers[t])):
                logits = self.scored.student_logits(t, b).float()
                target = self.scored.teacher(t, b)
                logq = F.log_softmax(logits, dim=-1)
                p = target.probs
                q = logq if target.index is None else logq.gather(-1, target.index)
                kl = (p * (p.clamp_min(1e-30).log() - q)).sum(-1)
                if target.tail is not None:
                    q_tail = (1 - q.exp().sum(-1)).clamp_min(1e-12)
                    kl = kl + target.tail * (target.tail.clamp_min(1e-30).log() - q_tail.log())
                top = p.argmax(-1, keepdim=True)
                own = top if target.index is None else target.index.gather(-1, top)
                nll = -logq.gather(-1, own).squeeze(-1)
                kl_sum += float(kl.sum())
                nll_sum += float(nll.sum())
                rows += kl.numel()
            kls.append(kl_sum / rows)
            nlls.append(nll_sum / rows)
        return sum(kls) / len(kls), sum(nlls) / len(nlls)

    def score(self, recipe: dict, lam: torch.Tensor, names: list[str] | None = None) -> dict:
        state = self.merger.merge(Recipe.from_dict(recipe))
        result = self.evaluator.score_state(state)
        kl, nll = self.heldout_kl_nll(lam, names)
        return {"agreement": result.mean("agreement"), "kl": kl, "nll": nll,
                "tasks": {t: s.agreement for t, s in result.scores.items() if s.agreement is not None}}

    def task_arithmetic(self, weight: float) -> dict:
        recipe = {"merge_method": "task_arithmetic", "base_model": BASE,
                  "models": [{"model": e, "parameters": {"weight": weight}} for e in self.family.experts]}
        lam = torch.full((len(self.family.experts), self.scored.vectors.num_tensors), float(weight))
        return self.score(recipe, lam)

    def learned(self, method: str, inputs: dict[str, list[str]], **kwargs) -> dict:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        merge = learn_merge(method, self.family.base, self.family.experts, inputs, **kwargs)
        total = time.perf_counter() - t0
        recipe = recipe_dict(BASE, list(self.family.experts), merge.names, merge.coefficients)
        scores = self.score(recipe, merge.coefficients, merge.names)
        summary = learn_summary(merge)
        scores.update(seconds=round(total, 1), steps_run=summary.get("steps_run"), best_step=summary.get("best_step"),
                      init=summary.get("init"), rho=summary.get("rho"), eps_ratio=summary.get("eps_ratio"),
                      train_loss_last=merge.losses[-1], heldout_loss=summary.get("heldout_loss"),
                      lambda_mean=[round(float(x), 3) for x in merge.coefficients.float().mean(dim=-1)])
        return scores


def fmt_pct(m: float, se: float | None = None) -> str:
    return f"{100 * m:.1f}" + ("" if se is None else f" ± {100 * se:.1f}")


def fmt(m: float, se: float | None = None) -> str:
    return f"{m:.3f}" + ("" if se is None else f" ± {se:.3f}")


def summary_row(family: str, label: str, runs: list[dict], extra: str = "") -> str:
    """One markdown row: agreement, held-out KL and NLL as mean ± SE over the runs (draws), per-task means."""
    agree, kl, nll = (mean_se([r[k] for r in runs]) for k in ("agreement", "kl", "nll"))
    tasks = " · ".join(f"{t} {100 * mean_se([r['tasks'][t] for r in runs])[0]:.1f}" for t in runs[0]["tasks"])
    se = len(runs) > 1
    line = (f"| {family} | {label} | {len(runs)} | **{fmt_pct(*(agree if se else agree[:1]))}** | "
            f"{fmt(*(kl if se else kl[:1]))} | {fmt(*(nll if se else nll[:1]))} | {tasks} | {extra} |")
    print(line, flush=True)
    return line


HEADER = ("| family | merge | draws | agreement % (mean ± SE) | held-out KL | held-out NLL | per task (mean) | notes |\n"
          "|---|---|---|---|---|---|---|---|")


def learned_notes(runs: list[dict]) -> str:
    parts = [f"{mean_se([r['seconds'] for r in runs])[0]:.0f} s",
             f"steps run {[r['steps_run'] for r in runs]}, kept {[r['best_step'] for r in runs]}",
             f"start λ {[r['init'] for r in runs]}"]
    if runs[0].get("eps_ratio") is not None:
        parts.append(f"‖ε‖/‖λ‖ {100 * mean_se([r['eps_ratio'] for r in runs])[0]:.1f} % (ρ {runs[0]['rho']:.3g})")
    return "; ".join(parts)


def run_heldout(bench: FamilyBench, args, results: dict) -> None:
    name = bench.family.name
    out = results.setdefault(name, {})
    out["base"] = bench.task_arithmetic(0.0)
    summary_row(name, "base (no task vectors)", [out["base"]])
    out["task_arithmetic"] = {w: bench.task_arithmetic(w) for w in TA_GRID}
    for w, s in out["task_arithmetic"].items():
        summary_row(name, f"task arithmetic λ={w}" + (" (app default)" if w == 0.5 else ""), [s])
    methods = {"sam": ("SAMerging (defaults)", "samerging", {}),
               "adam": ("Adam on the KL (SAMerging repo mode, same defaults)", "samerging", {"sam_mode": "repo"}),
               "ada": ("AdaMerging (defaults)", "adamerging", {})}
    for label, method, kwargs in (methods[m] for m in args.methods.split(",")):
        runs = [bench.learned(method, bench.inputs(args.examples, d), steps=args.steps, **kwargs)
                for d in range(args.draws)]
        out[label] = runs
        summary_row(name, label, runs, learned_notes(runs))


def run_rho(bench: FamilyBench, args, results: dict) -> None:
    name = bench.family.name
    out = results.setdefault(name, {})
    for rho in [float(r) for r in args.rhos.split(",")]:
        kwargs = {"rho": 0.0} if rho == 0 else {"rho_relative": rho}
        runs = [bench.learned("samerging", bench.inputs(args.examples, d), steps=args.steps, **kwargs)
                for d in range(args.draws)]
        out[f"rho_relative={rho}"] = runs
        summary_row(name, f"SAMerging ‖ε‖/‖λ‖ target {rho:g}" + (" (= Adam)" if rho == 0 else ""), runs,
                    learned_notes(runs))


def run_sharp(bench: FamilyBench, args, results: dict) -> None:
    """Few examples per task (many more coefficients than data): true SAM vs the same optimiser without SAM."""
    name = bench.family.name
    out = results.setdefault(name, {})
    for label, kwargs in [("Adam on the KL (repo mode)", {"sam_mode": "repo"}),
                          ("SAMerging, true SAM (defaults)", {}),
                          ("SAMerging, true SAM, ‖ε‖/‖λ‖ target 0.2", {"rho_relative": 0.2})]:
        runs = [bench.learned("samerging", bench.inputs(args.examples, d), steps=args.steps, holdout=args.holdout,
                              **kwargs) for d in range(args.draws)]
        out[label] = runs
        summary_row(name, f"{label}, {args.examples}/task", runs, learned_notes(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("heldout", "rho", "sharp"))
    parser.add_argument("--family", default="lm", help="lm, classifier, minilm or smollm2")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--examples", type=int, default=16, help="unlabeled inputs per task and draw")
    parser.add_argument("--steps", type=int, default=200, help="most steps (early stopping may end sooner)")
    parser.add_argument("--holdout", type=float, default=0.25, help="sharp: held-out fraction for early stopping")
    parser.add_argument("--rhos", default="0,0.02,0.05,0.1,0.2")
    parser.add_argument("--methods", default="sam,adam,ada", help="heldout: sam, adam (repo mode), ada")
    parser.add_argument("--score-per-task", type=int, default=None, help="score only the first N prompts per task")
    parser.add_argument("--json", default=None, help="write all scores to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    family = zoo.ensure_family(args.family)
    bench = FamilyBench(family, args.score_per_task)
    print(f"{family.name}: scored prompts per task {bench.scored_counts}; {args.examples} unlabeled per task and "
          f"draw; {args.draws} draws; steps ≤ {args.steps}", flush=True)
    print(HEADER, flush=True)
    results: dict = {"args": vars(args)}
    {"heldout": run_heldout, "rho": run_rho, "sharp": run_sharp}[args.mode](bench, args, results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
