"""Learned-merging timings.

    .venv/bin/python bench/bench_learn.py zoo [--steps 50]            # SAMerging/AdaMerging on both zoo families, CPU
    python bench/bench_learn.py synthetic --device cuda [--steps 10]   # GPT-2-size classifiers, self-contained

`synthetic` builds GPT2ForSequenceClassification from GPT2Config defaults (124M), a random base, seven random task
vectors and seven random heads, random token batches (16 per task, 128 tokens), computes the teachers once and times
plain Adam, SAMerging "repo" and SAMerging "true" steps. It needs only torch and transformers and prints one line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from merging.learned.coefficients import TaskVectors
from merging.learned.objectives import kl_loss, teacher_targets
from merging.learned.trainer import OptimConfig, learn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic(device: str, steps: int, tasks: int, seq: int, batch: int, layers: int | None, storage: str) -> str:
    from torch.func import functional_call
    from transformers import GPT2Config, GPT2ForSequenceClassification

    dev = torch.device(device)
    torch.manual_seed(0)
    config = GPT2Config() if layers is None else GPT2Config(n_layer=layers)
    config.pad_token_id = config.eos_token_id
    model = GPT2ForSequenceClassification(config).to(dev).eval()
    heads = [0.02 * torch.randn(2 + t % 3, config.n_embd, device=dev) for t in range(tasks)]
    params = dict(model.named_parameters())
    base = {n: p.detach().clone() for n, p in params.items() if n != "score.weight"}
    gen = torch.Generator(device=dev).manual_seed(1)
    experts = [{n: w + 1e-3 * torch.randn(w.shape, generator=gen, device=dev) for n, w in base.items()}
               for _ in range(tasks)]
    t0 = time.perf_counter()
    vectors = TaskVectors(base, experts, device=dev, storage=storage)
    del experts
    _sync(dev)
    build_s = time.perf_counter() - t0
    for n, p in params.items():
        p.requires_grad_(n in base)
    inputs = [torch.randint(0, config.vocab_size, (batch, seq), generator=gen, device=dev) for _ in range(tasks)]

    def logits(task: int) -> torch.Tensor:
        return functional_call(model, {"score.weight": heads[task]}, (inputs[task],)).logits

    t0 = time.perf_counter()
    teachers = []
    with torch.no_grad():
        for t in range(tasks):  # teacher t = θ0 + τ_t: λ one-hot
            vectors.materialize(torch.eye(tasks, device=dev)[t], params)
            teachers.append(teacher_targets(logits(t)))
    _sync(dev)
    teacher_s = time.perf_counter() - t0

    def loss_fn(task: int, _batch: int) -> torch.Tensor:
        return kl_loss(logits(task), teachers[task])

    timings = {}
    for label, cfg in [("adam", OptimConfig(steps=steps, rho=0.0)),
                       ("repo", OptimConfig(steps=steps, rho=0.07, sam_mode="repo", weight_decay=5e-4)),
                       ("true", OptimConfig(steps=steps, rho=0.07, sam_mode="true", weight_decay=5e-4))]:
        learn(vectors, {n: params[n] for n in vectors.names}, loss_fn, 1, OptimConfig(steps=1))  # warm-up
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        _sync(dev)
        t0 = time.perf_counter()
        result = learn(vectors, {n: params[n] for n in vectors.names}, loss_fn, 1, cfg)
        _sync(dev)
        timings[label] = (time.perf_counter() - t0) / steps
        final_loss = result.losses[-1]
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    n_params = sum(vectors.base[n].numel() for n in vectors.names)
    return (f"synthetic GPT-2 ({config.n_layer} layers, {n_params / 1e6:.0f}M merged params, {vectors.num_tensors} "
            f"tensors) x{tasks} tasks, batch {batch}x{seq} tokens per task, {name}, task vectors on "
            f"{vectors.storage.type}: build {build_s:.1f} s, teachers {teacher_s:.2f} s; per step: Adam "
            f"{timings['adam']:.3f} s, SAM repo {timings['repo']:.3f} s, SAM true {timings['true']:.3f} s; "
            f"peak GPU memory {peak:.1f} GiB; final loss {final_loss:.4f}")


def zoo_timings(steps: int, examples: int) -> list[str]:
    """Learning time of both methods on both zoo families (CPU, as the docs' table used)."""
    import json

    import zoo

    torch.set_num_threads(1)
    from merging.learned.api import learn_merge

    lines = []
    for family in zoo.tiny_families().values():  # the shipped ones (real families: learned_experiments.py)
        inputs: dict[str, list[str]] = {e: [] for e in family.experts}
        for line in family.unlabeled.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if row.get("expert") in inputs and len(inputs[row["expert"]]) < examples:
                inputs[row["expert"]].append(row.get("prompt", row.get("text")))
        for method in ("adamerging", "samerging"):
            t0 = time.perf_counter()
            # A fixed start and no held-out split: exactly `steps` steps, so the per-step time is comparable.
            merge = learn_merge(method, family.base, family.experts, inputs, steps=steps, init=0.3, holdout=0.0)
            total = time.perf_counter() - t0
            lines.append(f"| {family.name} | {method} | {len(family.experts)} | {examples} | {steps} | "
                         f"{total - merge.seconds:.1f} | {merge.seconds:.1f} | {1000 * merge.seconds / steps:.0f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("synthetic")
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    s.add_argument("--steps", type=int, default=10)
    s.add_argument("--tasks", type=int, default=7)
    s.add_argument("--seq", type=int, default=128)
    s.add_argument("--batch", type=int, default=16)
    s.add_argument("--layers", type=int, default=None, help="fewer GPT-2 layers for a quick CPU check")
    s.add_argument("--storage", choices=("auto", "device", "cpu"), default="auto",
                   help="where task vectors live (cpu = pinned, streamed per tensor)")
    z = sub.add_parser("zoo")
    z.add_argument("--steps", type=int, default=50)
    z.add_argument("--examples", type=int, default=16)
    args = parser.parse_args()
    if args.mode == "synthetic":
        print(synthetic(args.device, args.steps, args.tasks, args.seq, args.batch, args.layers, args.storage))
    else:
        print("| family | method | experts | examples/task | steps | setup s | learning s | ms/step |")
        print("|---|---|---|---|---|---|---|---|")
        for line in zoo_timings(args.steps, args.examples):
            print(line)


if __name__ == "__main__":
    main()
