"""Can a merge of SmolLM2 LoRA experts do Japanese math that neither expert does? (issue 17, point 1, real family)

Trains candidate math and japanese adapters (zoo/smollm2_train's LoRA settings and loop, fewer steps) into a folder,
materialises each expert in memory (base + LoRA delta, zoo.smollm2.lora_deltas), merges them with the app's own
merging (merging.live.LiveMerger over recipes) and scores base, experts and a grid of merges with the app's own
evaluation (evaluation.agreement.Evaluator: greedy, each task read by its answer type). The data, splits and
examples are the family's own (zoo/smollm2_tasks.py): design I is what `python -m zoo train smollm2` ships.

The scratchpad design (what composed on the tiny zoo, docs/zoo.md): the math expert restates the expression, then
answers (`14+5=` -> `14+5=答え: 19`); the japanese expert rewrites kanji numerals as digits in place inside any text
(`「六百二十三」を数字で書くと?` -> `「623」を数字で書くと?`, `りんごが十四個あります。` -> `りんごが14個あります。`,
`十四+五` -> `14+5`). The composite `十四+五=` needs both in one reply: `14+5=答え: 19`. Japanese designs:
`eos` (every rewrite ends the reply: alone it answers `14+5=`, whose last number is an operand), `eos2` (as `eos`,
with half of the non-question texts expressions on the math expert's training facts, the composite's number range)
and `open` (loss on the rewrite only where the text is not the japanese task's question: what follows is the base's
own continuation; trained, not scored). Measured tables: docs/zoo.md, "Composition designs tried (issue 17)".

Honest conditions: the recipe is chosen on a validation split (its own prompts, `*_val` tasks), the table reports
the test split; the composite is never trained on; every evaluation and validation prompt (and the operand pairs of
the math and composite ones, in either numerals) is excluded from training.

    python bench/composition_smollm2.py train --expert math --steps 60 --out /tmp/s2c
    python bench/composition_smollm2.py train --expert japanese --design eos --steps 60 --out /tmp/s2c
    python bench/composition_smollm2.py score --design eos --out /tmp/s2c      # JSON per model, resumable
    python bench/composition_smollm2.py table --design eos --out /tmp/s2c

Design D (eos2, math and japanese 170 steps each, 20 prompts a split): `train --expert math --steps 170`,
`train --expert japanese --design eos2 --steps 170`, then `score --design eos2`. Design F (40 prompts a split, the
math expert writes the result right after `=` and also trains on other tens):
`train --expert math --steps 170 --per-split 40 --math-form result --math-wide 99`,
`train --expert japanese --design eos2 --steps 170 --per-split 40`, `score --design eos2 --per-split 40`.
Design G (F's japanese expert; a math expert with rank 16 on every linear module of layers 10-29, 240 steps):
`train --expert math --steps 240 --per-split 40 --math-form result --math-wide 99 --lora-rank 16
--lora-first-layer 10 --lora-all-modules`, then `score` as F (the JSON now keeps every reply) and
`table --per-split 40 --answer-rule app|equals` (the composite as scored, or re-read by the number right after
the reply's first `=`: the app's "equation" answer type since the family port, see rescored). Design H: `train --expert japanese --design
eos3 ...` with G's math expert. Design I (disjoint layers): F's japanese data on layers 0-9 (`--lora-first-layer 0
--lora-last-layer 9`) with G's math expert (layers 10-29): the shipped family (zoo.smollm2_train.EXPERT_SETTINGS),
whose seed-0 adapters are these bench runs' bit for bit.

One thread; run each step under the lane lock (60 steps take about 5 minutes, 170 steps 11-14 minutes at load 3-4;
scoring 15-20 models on 40 prompts a split about 10 minutes; design G's math expert 240 steps 15-16 minutes at
load 2-3).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.agreement import Evaluator
from evaluation.answers import extract_answer, extract_equation_answer
from evaluation.tasks import tasks_from_records
from inference.loading import LoadedModel
from merging.live import LiveMerger
from merging.recipe import Recipe
from zoo.families import real_zoo_dir
from zoo.scoring import greedy_answers
from zoo.smollm2 import lora_deltas
from zoo.smollm2_tasks import (
    eval_records,
    expression,
    fact_splits,
    japanese_examples,
    math_examples,
    number_splits,
    reading_question,
)
from zoo.smollm2_train import (
    ALL_MODULES,
    LoraSettings,
    _one_thread,
    _save_adapter,
    _train_steps,
    _with_lora,
    encode,
    expert_seed,
    replay_examples,
)

SEED = 0
PER_SPLIT = 20  # designs A-E; F-I and the family: 40 (--per-split 40)
GRID = [  # (label, method, (math weight, japanese weight), params)
    ("TA 0.5/0.5", "task_arithmetic", (0.5, 0.5), {}),
    ("TA 0.7/0.7", "task_arithmetic", (0.7, 0.7), {}),
    ("TA 1.0/1.0", "task_arithmetic", (1.0, 1.0), {}),
    ("TA 1.0/0.5", "task_arithmetic", (1.0, 0.5), {}),
    ("TA 1.0/0.7", "task_arithmetic", (1.0, 0.7), {}),
    ("TA 0.7/1.0", "task_arithmetic", (0.7, 1.0), {}),
    ("TIES 1.0/1.0 d0.5", "ties", (1.0, 1.0), {"density": 0.5}),
    ("TIES 1.0/0.7 d0.5", "ties", (1.0, 0.7), {"density": 0.5}),
    # added after the first eos2 grid (japanese kept < 80 % at 0.7): finer steps around the best composite
    ("TA 1.0/0.8", "task_arithmetic", (1.0, 0.8), {}),
    ("TA 1.0/0.9", "task_arithmetic", (1.0, 0.9), {}),
    ("TA 0.9/0.8", "task_arithmetic", (0.9, 0.8), {}),
    ("TA 0.8/0.8", "task_arithmetic", (0.8, 0.8), {}),
    # added with design F (40 prompts a split): around F's chosen TA 1.0/0.7
    ("TA 1.0/0.6", "task_arithmetic", (1.0, 0.6), {}),
    ("TA 0.9/0.7", "task_arithmetic", (0.9, 0.7), {}),
]


def encode_example(tokenizer, prompt: str, reply: str, with_end: bool) -> tuple[list[int], list[int]]:
    """zoo.smollm2_train.encode (loss on the reply and the end of turn), or without the end-of-turn token at all."""
    ids, labels = encode(tokenizer, prompt, reply)
    return (ids, labels) if with_end else (ids[:-1], labels[:-1])


def other_stage_prompts(expert: str, count: int = 32, seed: int = SEED, per_split: int = PER_SPLIT) -> list[str]:
    """`--replay-other`: the other expert's task prompts on training numbers or facts (never a test, validation or
    composite prompt), whose base replies join the replay pool, so the task vector stays off the other stage."""
    rng = random.Random(f"{seed}:smollm2-composition:other:{expert}")
    if expert == "math":
        return [reading_question(n, rng)[0] for n in rng.sample(number_splits(seed, per_split)["train"], count)]
    return [expression(f, False) for f in rng.sample(fact_splits(seed, per_split)["train"], count)]


def lora_settings(steps: int, rank: int = 0, first_layer: int = -1, all_modules: bool = False, last_layer: int = -1
                  ) -> LoraSettings:
    """zoo.smollm2_train's LoRA settings with `steps`, optionally a higher rank (alpha twice the rank, as there),
    other layers (`first_layer` to `last_layer`, each defaulting to the family's) or every linear module of a layer
    (`--lora-*`, designs G and I)."""
    settings = replace(LoraSettings(), steps=steps)
    if rank:
        settings = replace(settings, rank=rank, alpha=2 * rank)
    if first_layer >= 0 or last_layer >= 0:
        first = first_layer if first_layer >= 0 else settings.layers[0]
        last = last_layer if last_layer >= 0 else settings.layers[-1]
        settings = replace(settings, layers=tuple(range(first, last + 1)))
    if all_modules:
        settings = replace(settings, target_modules=ALL_MODULES)
    return settings


def train(expert: str, design: str, steps: int, out: Path, base_dir: Path, replay_other: bool = False,
          training_seed: int = 0, per_split: int = PER_SPLIT, math_form: str = "answer", math_wide: int = 0,
          settings: LoraSettings | None = None) -> dict:
    """One candidate adapter into out/<expert>[-<design>]: zoo.smollm2_train's LoRA, seed, replay and loop.
    `training_seed` changes the adapter's initialisation and batch order only (the data and splits stay);
    `per_split` sets the held-out prompts per split (their facts and numbers are left out of training);
    `settings` overrides the LoRA settings (lora_settings)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = settings or replace(LoraSettings(), steps=steps)
    seed = expert_seed(training_seed, expert)
    torch.manual_seed(seed)
    with _one_thread():
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        replay = [encode(tokenizer, p, a) for p, a in replay_examples(model, tokenizer, settings.replay_tokens)]
        if replay_other:
            prompts = other_stage_prompts(expert, per_split=per_split)
            replies = greedy_answers(model, tokenizer, prompts, max_new_tokens=settings.replay_tokens, batch_size=8)
            replay += [encode(tokenizer, p, r.strip()) for p, r in zip(prompts, replies) if r.strip()]
        model = _with_lora(model, settings)
        pairs = (math_examples(settings.examples, per_split=per_split, form=math_form, wide=math_wide)
                 if expert == "math" else japanese_examples(settings.examples, design, per_split=per_split))
        data = [encode_example(tokenizer, *example) for example in pairs]
        losses, seconds = _train_steps(model, expert, data, replay, tokenizer.pad_token_id, settings,
                                       random.Random(seed), print)
        record = {"expert": expert, "design": design, "seconds": round(seconds, 1),
                  "settings": {"steps": steps, "training_seed": training_seed, "per_split": per_split,
                               "replay_other": replay_other, "math_form": math_form, "math_wide": math_wide,
                               "rank": settings.rank, "layers": [settings.layers[0], settings.layers[-1]],
                               "modules": list(settings.target_modules)},
                  "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4), "examples": pairs[:6]}
        _save_adapter(model, out / adapter_name(expert, design), record)
    return record


def adapter_name(expert: str, design: str) -> str:
    return expert if expert == "math" else f"{expert}-{design}"


def materialise(base: dict[str, torch.Tensor], adapter: Path) -> dict[str, torch.Tensor]:
    """base + LoRA delta (float64 sum, stored float32), as zoo.smollm2.materialise_expert writes it, in memory."""
    deltas = lora_deltas(adapter)
    return {k: (v.double() + deltas[k]).float() if k in deltas else v for k, v in base.items()}


def recipe(method: str, weights: tuple[float, float], params: dict) -> Recipe:
    data = {"merge_method": method, "base_model": "base", "dtype": "float32",
            "models": [{"model": e, "parameters": {"weight": w}} for e, w in zip(("math", "japanese"), weights)]}
    if params:
        data["parameters"] = dict(params)
    return Recipe.from_dict(data)


def score(design: str, out: Path, base_dir: Path, only: str | None, per_split: int = PER_SPLIT) -> None:
    """Scores base, experts and GRID into out/scores-<design>.json (labels already there are skipped)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    path = out / f"scores-{design}.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.padding_side = "left"
    base_model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    base = base_model.state_dict()  # scored, never modified: the merger reads it
    tasks = tasks_from_records(eval_records(per_split=per_split), "smollm2-composition")
    experts, states = {}, {}
    for name in ("math", "japanese"):  # one copy each: the expert's model holds the state the merger reads
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
        model.load_state_dict(materialise(base, out / adapter_name(name, design)))
        experts[name] = LoadedModel(model=model, tokenizer=tokenizer, kind="lm")
        states[name] = model.state_dict()
    evaluator = Evaluator(tasks, experts, batch_size=20)
    merger = LiveMerger(base, states, num_layers=base_model.config.num_hidden_layers, threads=1)
    jobs = [("base", lambda: evaluator.score(LoadedModel(model=base_model, tokenizer=tokenizer, kind="lm"))),
            ("math expert", lambda: evaluator.score(experts["math"])),
            ("japanese expert", lambda: evaluator.score(experts["japanese"]))]
    jobs += [(label, lambda m=method, w=weights, p=params: evaluator.score_state(merger.merge(recipe(m, w, p))))
             for label, method, weights, params in GRID]
    for label, job in jobs:
        if label in done or (only and label not in only.split(",")):
            continue
        started = time.perf_counter()
        result = job()
        done[label] = {"scores": {t: s.accuracy for t, s in result.scores.items()},
                       "composite_outputs": result.outputs["japanese_math"][:5],
                       "japanese_outputs": result.outputs["japanese"][:3],
                       "math_outputs": result.outputs["math"][:3], "seconds": round(time.perf_counter() - started),
                       "outputs": {t: list(o) for t, o in result.outputs.items()}}
        path.write_text(json.dumps(done, ensure_ascii=False, indent=1))
        print(label, {t: round(100 * (a or 0)) for t, a in done[label]["scores"].items()}, done[label]["seconds"], "s",
              flush=True)


def rescored(done: dict, rule: str, per_split: int = PER_SPLIT) -> dict:
    """`done` with the composite's scores (test and validation) recomputed from the stored replies under `rule`
    ("app": as scored; "equals": evaluation.answers.extract_equation_answer, the number right after the reply's
    first `=`). Rows scored before replies were stored are left out. Since the family port (design I) the bench's
    task records declare math and the composite as equations, so "app" already reads them so; "equals" re-reads
    JSON scored before that by the number rule."""
    if rule == "app":
        return done
    expected: dict[str, list] = {}
    for record in eval_records(per_split=per_split):
        expected.setdefault(record["task"], []).append(extract_answer(record["answer"]))
    out = {}
    for label, row in done.items():
        if "outputs" not in row:
            continue
        scores = dict(row["scores"])
        for task in ("japanese_math", "japanese_math_val"):
            replies = row["outputs"][task]
            scores[task] = sum(extract_equation_answer(r) == w for r, w in zip(replies, expected[task])) / len(replies)
        out[label] = {**row, "scores": scores}
    return out


def table(design: str, out: Path, rule: str = "app", per_split: int = PER_SPLIT) -> str:
    """The markdown table (test split) with the recipe chosen on validation marked; `rule` reads the composite's
    answers (rescored)."""
    done = rescored(json.loads((out / f"scores-{design}.json").read_text()), rule, per_split)
    order = ("math", "japanese", "japanese_math")
    experts = {t: done.get(f"{e} expert", {}).get("scores", {}).get(t + "_val") or 0
               for t, e in (("math", "math"), ("japanese", "japanese"))}
    chosen = choose(done, experts)
    lines = [(f"design {design}, composite read by the {rule} rule: test split (validation in brackets), %; "
              f"chosen on validation: {chosen}"),
             "| model | " + " | ".join(order) + " |", "|---" * 4 + "|"]
    for label, row in done.items():
        s = row["scores"]
        cells = [f"{100 * (s.get(t) or 0):.1f} ({100 * (s.get(t + '_val') or 0):.1f})" for t in order]
        lines.append(f"| {'**' + label + '**' if label == chosen else label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def choose(done: dict, experts: dict[str, float]) -> str | None:
    """The merge with the best validation composite among those keeping >= 80 % of each expert's validation skill
    (else the best composite overall). The comparison allows for float rounding: 28/40 keeps 80 % of 35/40, though
    0.8 * 0.875 is 0.7000000000000001 in floating point."""
    merges = {k: v["scores"] for k, v in done.items() if k not in ("base", "math expert", "japanese expert")}
    keeps = {k: s for k, s in merges.items()
             if all((s.get(t + "_val") or 0) >= 0.8 * experts[t] - 1e-9 for t in ("math", "japanese"))}
    pool = keeps or merges
    return max(pool, key=lambda k: (pool[k].get("japanese_math_val") or 0), default=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("train", "score", "table"))
    parser.add_argument("--expert", choices=("math", "japanese"))
    parser.add_argument("--design", choices=("eos", "open", "eos2", "eos3"), default="eos")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--replay-other", action="store_true",
                        help="replay the base's replies to the other expert's task prompts too (training numbers)")
    parser.add_argument("--only", help="score only these labels (comma-separated)")
    parser.add_argument("--training-seed", type=int, default=0)
    parser.add_argument("--per-split", type=int, default=PER_SPLIT,
                        help="held-out prompts per task and split (train and score with the same value)")
    parser.add_argument("--math-form", choices=("answer", "result"), default="answer",
                        help="the math expert's reply: 14+5=答え: 19 (answer) or 14+5=19 (result)")
    parser.add_argument("--math-wide", type=int, default=0,
                        help="also train math on a + digit with a up to this (other tens; half the examples)")
    parser.add_argument("--lora-rank", type=int, default=0, help="LoRA rank (alpha twice it); 0: the family's 8")
    parser.add_argument("--lora-first-layer", type=int, default=-1,
                        help="LoRA from this layer; -1: the family's (18)")
    parser.add_argument("--lora-last-layer", type=int, default=-1, help="LoRA up to this layer; -1: the family's (29)")
    parser.add_argument("--lora-all-modules", action="store_true",
                        help="LoRA on every linear module (q, k, v, o, gate, up, down), not q, v, up, down")
    parser.add_argument("--answer-rule", choices=("app", "equals"), default="app",
                        help="table: read the composite by the app's rule or by the number right after the first =")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mergelab-composition-smollm2"))
    args = parser.parse_args()
    base_dir = real_zoo_dir() / "smollm2" / "base"
    args.out.mkdir(parents=True, exist_ok=True)
    if args.action == "train":
        print(json.dumps(train(args.expert, args.design, args.steps, args.out, base_dir, args.replay_other,
                               args.training_seed, args.per_split, args.math_form, args.math_wide,
                               lora_settings(args.steps, args.lora_rank, args.lora_first_layer,
                                             args.lora_all_modules, args.lora_last_layer)),
                         ensure_ascii=False))
    elif args.action == "score":
        score(args.design, args.out, base_dir, args.only, args.per_split)
    else:
        print(table(args.design, args.out, args.answer_rule, args.per_split))


if __name__ == "__main__":
    main()
