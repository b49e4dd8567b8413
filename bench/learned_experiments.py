"""The experiments behind docs/learned-merging.md, scored on prompts disjoint from those learned on, over several
disjoint draws of the unlabeled inputs, with 95 % intervals (evaluation.stats).

    .venv/bin/python bench/learned_experiments.py heldout --family lm [--draws 5] [--examples 12] [--steps 200]
    .venv/bin/python bench/learned_experiments.py rho --family lm [--rhos 0,0.02,0.05,0.1,0.2] [--draws 5]
    .venv/bin/python bench/learned_experiments.py sharp --family minilm [--examples 2] [--draws 5]

Families: lm / classifier (the shipped tiny zoo), minilm / smollm2 (real families, built on demand by zoo).
Draw d learns from the unlabeled inputs d·N … (d+1)·N − 1 of each expert (N = --examples; SAMerging and AdaMerging
keep a quarter of them aside for early stopping). Every merge is scored on the family's task file, which shares no
prompt with the unlabeled file:
- accuracy: the merged model's answer equals the task file's true answer (mean over the experts' own tasks; a
  composite task with no expert, japanese_math, is reported apart);
- agreement: the merged model gives the answer of the task's own expert, over the examples the expert answered
  ("no answer" never agrees; evaluation.Evaluator.score_state on the state LiveMerger builds from the recipe, the
  product's own path);
- held-out KL: mean KL(expert ‖ merge) at temperature 1 over the scored prompts (LM: at the positions of the expert's
  greedy answer; classifiers: the task's head);
- held-out NLL: −log p_merge(the expert's own prediction) over the same rows.
Baselines are chosen per draw on that draw's learning inputs, as evaluation.baselines does for every comparison:
task arithmetic with one λ (best of a grid), with one λ per expert (a coordinate pass from it) and TIES at its best
density and λ, each by agreement with the experts on the learning inputs (never on the scored set). Fixed task
arithmetic λ values are shown for reference (one value: they do not depend on the draw).

Each row: mean over draws with its 95 % t interval, and the scored set's own binomial error (± half-width of the
normal 95 % interval of the task mean at the row's per-task shares). Paired rows: learned − baseline draw by draw,
with its 95 % t interval; a difference is called established only when the interval excludes 0. Prints markdown;
--json writes every number.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import zoo
from evaluation.agreement import EvalResult, Evaluator
from evaluation.baselines import TASK_WISE, TIES, UNIFORM, choose_baselines, learning_tasks, settings_recipe
from evaluation.stats import binomial_halfwidth, direction, mean_interval, paired_difference
from evaluation.tasks import load_tasks
from inference.loading import load_model
from merging.learned.adapters import read_state, setup_causal_lm, setup_classifier
from merging.learned.api import learn_merge, learn_summary
from merging.learned.recipe_io import recipe_dict
from merging.live import LiveMerger
from merging.recipe import Recipe

TA_GRID = (0.3, 0.5, 0.7, 1.0)
BASE = "base"
METRICS = ("accuracy", "agreement")


class FamilyBench:
    """One family loaded once: experts, evaluator (expert answers cached), LiveMerger, the scored prompts' teacher
    targets for the held-out KL/NLL, and the unlabeled inputs."""

    def __init__(self, family: zoo.Family, score_per_task: int | None = None) -> None:
        self.family = family
        self.experts = {name: load_model(path, dtype="float32") for name, path in family.experts.items()}
        tasks = load_tasks(family.tasks)
        if score_per_task:
            tasks = tasks.limited(score_per_task)
        self.tasks = tasks
        self.evaluator = Evaluator(tasks, self.experts)
        predictions = self.evaluator.expert_predictions()
        owned = {n: t for n, t in tasks.tasks.items() if t.expert is not None}
        # the number of examples each share is over: expert-answered (agreement), known answers (accuracy)
        self.counts = {
            "agreement": {n: sum(a is not None for a in predictions[t.expert].tasks[n].answers) for n, t in owned.items()},
            "accuracy": {n: sum(a is not None for a in t.answers) for n, t in owned.items()},
        }
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

    def score(self, recipe: dict, lam: torch.Tensor | None = None, names: list[str] | None = None) -> dict:
        """Accuracy and agreement (means over the experts' own tasks), per task, composite tasks' accuracy, and the
        held-out KL/NLL when the merge is θ(λ) (task arithmetic and learned merges; not TIES)."""
        result = self.evaluator.score_state(self.merger.merge(Recipe.from_dict(recipe)))
        out = own_task_means(result)
        if lam is not None:
            out["kl"], out["nll"] = self.heldout_kl_nll(lam, names)
        return out

    def task_arithmetic(self, weights: list[float] | float) -> dict:
        weights = [float(weights)] * len(self.family.experts) if isinstance(weights, float | int) else weights
        recipe = {"merge_method": "task_arithmetic", "base_model": BASE,
                  "models": [{"model": e, "parameters": {"weight": w}} for e, w in zip(self.family.experts, weights)]}
        lam = torch.tensor(weights, dtype=torch.float32)[:, None].expand(-1, self.scored.vectors.num_tensors)
        return self.score(recipe, lam)

    def baselines(self, inputs: dict[str, list[str]]) -> dict[str, dict]:
        """The baselines chosen on this draw's learning inputs (evaluation.baselines), scored on the task file."""
        tokenizer = next(iter(self.experts.values())).tokenizer
        selector = Evaluator(learning_tasks(inputs, self.tasks, tokenizer), self.experts)
        experts = list(self.family.experts)

        def merge(settings: dict) -> dict:
            return self.merger.merge(settings_recipe(BASE, experts, settings))

        out = {}
        for name, choice in choose_baselines(selector, merge, len(experts)).items():
            recipe = settings_recipe(BASE, experts, choice.settings).to_dict()
            if choice.settings["method"] == "task_arithmetic":
                scores = self.task_arithmetic(choice.settings["weights"])
            else:
                scores = self.score(recipe)
            out[name] = {**scores, "chosen": choice.describe(), "settings": choice.settings}
        return out

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


def own_task_means(result: EvalResult) -> dict:
    """Mean accuracy and agreement over the tasks an expert owns, each task's two shares, and the accuracy of each
    composite task (no expert) apart."""
    owned = {n: sc for n, sc in result.scores.items() if sc.expert is not None}
    out: dict = {"tasks": {n: {"accuracy": sc.accuracy, "agreement": sc.agreement} for n, sc in owned.items()},
                 "composite": {n: sc.accuracy for n, sc in result.scores.items() if sc.expert is None}}
    for metric in METRICS:
        values = [getattr(sc, metric) for sc in owned.values() if getattr(sc, metric) is not None]
        out[metric] = sum(values) / len(values) if values else None
    return out


def pct_interval(values: list[float]) -> str:
    ci = mean_interval(values)
    if ci.n == 1:
        return f"{100 * ci.mean:.1f}"
    return f"{100 * ci.mean:.1f} [{100 * ci.low:.1f}, {100 * ci.high:.1f}]"


def scored_set_error(bench: FamilyBench, runs: list[dict], metric: str) -> str:
    """± the scored set's binomial error of the row's task mean (at the per-task means over draws), in points."""
    counts = bench.counts[metric]
    shares = [sum(r["tasks"][t][metric] for r in runs) / len(runs) for t in counts]
    return f"±{100 * binomial_halfwidth(shares, list(counts.values())):.1f}"


HEADER = ("| merge | draws | accuracy % [95 % CI] | agreement % [95 % CI] | scored-set ± (acc / agr) | held-out KL "
          "| per task acc / agr (mean) | composite acc | notes |\n|---|---|---|---|---|---|---|---|---|")


def summary_row(bench: FamilyBench, label: str, runs: list[dict], extra: str = "") -> str:
    """One markdown row: accuracy and agreement as mean [95 % t interval] over draws, the scored set's binomial
    error, held-out KL where defined, per-task means, composite accuracy."""
    cells = [pct_interval([r[m] for r in runs]) for m in METRICS]
    error = " / ".join(scored_set_error(bench, runs, m) for m in METRICS)
    kl = mean_interval([r["kl"] for r in runs]) if all("kl" in r for r in runs) else None
    kl_cell = "–" if kl is None else (f"{kl.mean:.3f}" if kl.n == 1 else f"{kl.mean:.3f} [{kl.low:.3f}, {kl.high:.3f}]")
    tasks = " · ".join(f"{t} {100 * sum(r['tasks'][t]['accuracy'] for r in runs) / len(runs):.0f} / "
                       f"{100 * sum(r['tasks'][t]['agreement'] for r in runs) / len(runs):.0f}" for t in runs[0]["tasks"])
    composite = " · ".join(f"{t} {100 * sum(r['composite'][t] for r in runs) / len(runs):.1f}"
                           for t in runs[0]["composite"]) or "–"
    line = f"| {label} | {len(runs)} | {cells[0]} | {cells[1]} | {error} | {kl_cell} | {tasks} | {composite} | {extra} |"
    print(line, flush=True)
    return line


PAIRED_HEADER = ("| learned | minus | Δ accuracy, points [95 % CI] | Δ agreement, points [95 % CI] | per draw (Δ acc) "
                 "| verdict |\n|---|---|---|---|---|---|")


def paired_row(label: str, baseline: str, ours: list[dict], theirs: list[dict]) -> str:
    """Learned − baseline draw by draw, for accuracy and agreement, each worded by its interval."""
    diffs = {m: paired_difference([r[m] for r in ours], [r[m] for r in theirs]) for m in METRICS}
    cells = [f"{100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]" for d in diffs.values()]
    per_draw = ", ".join(f"{100 * (a['accuracy'] - b['accuracy']):+.1f}" for a, b in zip(ours, theirs))
    verdict = "; ".join(f"{m} {direction(d)}" for m, d in diffs.items())
    line = f"| {label} | {baseline} | {cells[0]} | {cells[1]} | {per_draw} | {verdict} |"
    print(line, flush=True)
    return line


def learned_notes(runs: list[dict]) -> str:
    parts = [f"{sum(r['seconds'] for r in runs) / len(runs):.0f} s",
             f"steps run {[r['steps_run'] for r in runs]}, kept {[r['best_step'] for r in runs]}",
             f"start λ {[r['init'] for r in runs]}"]
    if runs[0].get("eps_ratio") is not None:
        parts.append(f"‖ε‖/‖λ‖ {100 * sum(r['eps_ratio'] for r in runs) / len(runs):.1f} % (ρ {runs[0]['rho']:.3g})")
    return "; ".join(parts)


LEARNERS = {"sam": ("SAMerging (defaults)", "samerging", {}),
            "adam": ("Adam on the KL (SAMerging repo mode, same defaults)", "samerging", {"sam_mode": "repo"}),
            "ada": ("AdaMerging (defaults)", "adamerging", {}),
            "paper": ("SAMerging, the paper's settings", "samerging", {"defaults": "paper"})}


def run_heldout(bench: FamilyBench, args, results: dict) -> None:
    out = results.setdefault(bench.family.name, {})
    out["base"] = bench.task_arithmetic(0.0)
    summary_row(bench, "base (no task vectors)", [out["base"]])
    out["fixed"] = {w: bench.task_arithmetic(w) for w in TA_GRID}
    for w, s in out["fixed"].items():
        summary_row(bench, f"task arithmetic λ={w} (fixed, reference)", [s])
    draws = [bench.inputs(args.examples, d) for d in range(args.draws)]
    chosen = [bench.baselines(inputs) for inputs in draws]
    out["baselines"] = {name: [c[name] for c in chosen] for name in (UNIFORM, TASK_WISE, TIES)}
    for name, runs in out["baselines"].items():
        summary_row(bench, f"{name} (chosen per draw)", runs, "; ".join(r["chosen"] for r in runs))
    learned = {}
    for key in args.methods.split(","):
        label, method, kwargs = LEARNERS[key]
        runs = [bench.learned(method, inputs, steps=args.steps, **kwargs) for inputs in draws]
        learned[label] = out[label] = runs
        summary_row(bench, label, runs, learned_notes(runs))
    # Diagnostic: task arithmetic at each learned merge's own per-task mean λ (three scalars per draw): how much
    # of the learned merge is rebalancing the tasks, and how much its per-tensor structure.
    means = {label: [bench.task_arithmetic(r["lambda_mean"]) for r in runs] for label, runs in learned.items()}
    for label, rows in means.items():
        out[f"task arithmetic at the mean λ of {label}"] = rows
        summary_row(bench, f"task arithmetic at {label}'s per-task mean λ", rows)
    print("\n" + PAIRED_HEADER, flush=True)
    for label, runs in learned.items():
        for name, theirs in [*out["baselines"].items(), ("its per-task mean λ", means[label])]:
            paired_row(label, name, runs, theirs)


def paired_against_first(rows: dict[str, list[dict]]) -> None:
    """Each configuration minus the first one (the same optimiser without SAM), draw by draw: accuracy, agreement
    and held-out KL, each with its 95 % t interval and worded by it."""
    (first_label, first), *others = rows.items()
    print("\n| configuration | minus | Δ accuracy, points [95 % CI] | Δ agreement, points [95 % CI] | "
          "Δ held-out KL [95 % CI] | per draw (Δ KL) | verdict |\n|---|---|---|---|---|---|---|", flush=True)
    for label, runs in others:
        diffs = {m: paired_difference([r[m] for r in runs], [r[m] for r in first]) for m in (*METRICS, "kl")}
        cells = [f"{100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]" for m, d in diffs.items() if m != "kl"]
        kl = diffs["kl"]
        per_draw = ", ".join(f"{a['kl'] - b['kl']:+.4f}" for a, b in zip(runs, first))
        verdict = "; ".join(f"{m} {direction(d)}" for m, d in diffs.items())
        print(f"| {label} | {first_label} | {cells[0]} | {cells[1]} | {kl.mean:+.4f} [{kl.low:+.4f}, {kl.high:+.4f}] "
              f"| {per_draw} | {verdict} |", flush=True)


def run_rho(bench: FamilyBench, args, results: dict) -> None:
    out = results.setdefault(bench.family.name, {})
    rows = {}
    for rho in [float(r) for r in args.rhos.split(",")]:
        kwargs = {"rho": 0.0} if rho == 0 else {"rho_relative": rho}
        runs = [bench.learned("samerging", bench.inputs(args.examples, d), steps=args.steps, **kwargs)
                for d in range(args.draws)]
        label = f"SAMerging ‖ε‖/‖λ‖ target {rho:g}" + (" (= Adam)" if rho == 0 else "")
        rows[label] = out[f"rho_relative={rho}"] = runs
        summary_row(bench, label, runs, learned_notes(runs))
    paired_against_first(rows)


def run_sharp(bench: FamilyBench, args, results: dict) -> None:
    """Few examples per task (many more coefficients than data): true SAM vs the same optimiser without SAM."""
    out = results.setdefault(bench.family.name, {})
    rows = {}
    for label, kwargs in [("Adam on the KL (repo mode)", {"sam_mode": "repo"}),
                          ("SAMerging, true SAM (defaults)", {}),
                          ("SAMerging, true SAM, ‖ε‖/‖λ‖ target 0.2", {"rho_relative": 0.2})]:
        runs = [bench.learned("samerging", bench.inputs(args.examples, d), steps=args.steps, holdout=args.holdout,
                              **kwargs) for d in range(args.draws)]
        rows[label] = out[label] = runs
        summary_row(bench, f"{label}, {args.examples}/task", runs, learned_notes(runs))
    paired_against_first(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("heldout", "rho", "sharp"))
    parser.add_argument("--family", default="lm", help="lm, classifier, minilm or smollm2")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--examples", type=int, default=12, help="unlabeled inputs per task and draw")
    parser.add_argument("--steps", type=int, default=200, help="most steps (early stopping may end sooner)")
    parser.add_argument("--holdout", type=float, default=0.25, help="sharp: held-out fraction for early stopping")
    parser.add_argument("--rhos", default="0,0.02,0.05,0.1,0.2")
    parser.add_argument("--methods", default="sam,adam,ada",
                        help="heldout: sam, adam (repo mode), ada, paper (SAMerging at the paper's settings)")
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
