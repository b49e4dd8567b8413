"""Live re-merge after a slider move: what the app does when a weight or density slider moves (build the recipe,
LiveMerger.merge_into the session's chat model, in place), timed per move; and the same move end to end through the
running app's /merge endpoint (queue + HTTP) with gradio_client.

    .venv/bin/python bench/bench_live.py [--moves 30] [--record]                      # the LM zoo (0.27 M params)
    .venv/bin/python bench/bench_live.py --family 135m [--moves 5] [--device cuda] [--record]
    .venv/bin/python bench/bench_live.py --family smollm2 [--moves 5] [--record]      # the real default family

`--family 135m`: the SmolLM2-135M base (bf16) built by `python -m zoo build smollm2` when it is there, else a
random bf16 Llama of SmolLM2-135M's shape, plus two synthetic bf16 experts (base + sparse noise), written once to
$TMPDIR/mergelab-bench-135m. `--device cuda` keeps the sources on the GPU (the app does so on a GPU host).
`--family smollm2`: the app's default family as `python -m zoo build smollm2` builds it (float32 folders; the math
and japanese experts), chosen as the default preset chooses it.
--record replaces the family's section of docs/benchmarks.md with the figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_MS = 300.0
METHODS = {"task_arithmetic": {}, "ties": {"density": 0.5}, "dare_ties": {"density": 0.5}}
EXPERTS = ["math", "japanese", "strings"]
# The 135M family's targets (issue 8) end to end through /merge on the 2-core CPU.
TARGETS_135M_MS = {"task_arithmetic": 1000.0, "ties": 3000.0}
SECTIONS = {"zoo": "## Live re-merge", "135m": "## Live re-merge at 135M parameters (bf16)",
            "smollm2": "## Live re-merge on the SmolLM2 family"}
SMOLLM2_EXPERTS = ["math", "japanese"]
FLOOR_SECTIONS = {"zoo": "## Live re-merge against its floor (LM zoo, CPU)",
                  "135m": "## Live re-merge against its floor (135M bf16, CPU)",
                  "smollm2": "## Live re-merge against its floor (SmolLM2 family, CPU)"}


def family_135m() -> tuple[Path, list[Path]]:
    """(base, experts) of a bf16 SmolLM2-135M-shaped family, made once."""
    import json
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    root = Path(tempfile.gettempdir()) / "mergelab-bench-135m"
    experts = [root / "expert-a", root / "expert-b"]
    if all((p / "model.safetensors").is_file() for p in [root / "base", *experts]):
        return root / "base", experts
    real = ROOT / "models" / "zoo" / "smollm2" / "base"
    base = root / "base"
    shutil.rmtree(root, ignore_errors=True)
    if (real / "model.safetensors").is_file():
        shutil.copytree(real, base)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                             num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
        torch.manual_seed(0)
        LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(base)
        sys.path.insert(0, str(ROOT))
        from tests.factory import tiny_tokenizer

        tiny_tokenizer().save_pretrained(base)
    state = load_file(base / "model.safetensors")
    gen = torch.Generator().manual_seed(1)
    for folder in experts:
        shutil.copytree(base, folder)
        tuned = {}
        for name, w in state.items():
            noise = torch.randn(w.shape, generator=gen) * (w.float().std() * 0.05 + 1e-4)
            noise[torch.rand(w.shape, generator=gen) < 0.3] = 0.0
            tuned[name] = (w.float() + noise).to(w.dtype)
        save_file(tuned, folder / "model.safetensors", metadata={"format": "pt"})
        (folder / "mergelab_source.json").write_text(json.dumps({"synthetic": "base + sparse noise"}))
    return base, experts


def family_choice(family: str) -> tuple[tuple, list[str], dict]:
    """(ModelsChoice fields, expert labels' count as weights template, methods) for the family."""
    if family == "zoo":
        return ("Zoo", "lm", EXPERTS, "", ""), EXPERTS, METHODS
    if family == "smollm2":
        from zoo import ensure_family

        ensure_family("smollm2")
        return ("Zoo", "smollm2", SMOLLM2_EXPERTS, "", ""), SMOLLM2_EXPERTS, METHODS
    base, experts = family_135m()
    methods = {"task_arithmetic": {}, "ties": {"density": 0.5}}
    return ("Local folders", "lm", [], str(base), "\n".join(map(str, experts))), [p.name for p in experts], methods


def moves(n: int, k: int = 3) -> list[list[float]]:
    """Slider positions a user might pass through: one of the k weights changes per move."""
    weights, out = [0.5] * k, []
    for i in range(n):
        weights = list(weights)
        weights[i % k] = round(0.1 + (i * 0.137) % 1.0, 2)
        out.append(weights)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench_handlers(n: int, family: str, device: str | None) -> tuple[dict[str, list[float]], str]:
    from merging.settings import MergeSettings
    from ui import models_panel, resources
    from ui.hosting import HostConfig
    from ui.session import new_session
    from ui.workspace import merge_live

    if device:
        resources.device = lambda: device  # the app picks cuda by itself on a GPU host; this forces the choice
    choice, labels, methods = family_choice(family)
    config = HostConfig.detect(hosted=False, models_dir=Path(tempfile.mkdtemp(prefix="bench-live-")))
    session = new_session()
    started = time.perf_counter()
    models_panel.check_models(session, config, models_panel.ModelsChoice(*choice))
    if session.live is None:
        raise SystemExit(f"live merging is off: {session.live_plan.reason}")
    print(f"choose models + pre-flight + read the sources: {time.perf_counter() - started:.2f} s "
          f"({session.live_plan.reason})")
    merge_live(session, MergeSettings("task_arithmetic", [0.5] * len(labels)))  # first merge makes the chat model
    timings: dict[str, list[float]] = {}
    for method, params in methods.items():
        times = []
        for weights in moves(n, len(labels)):
            tick = time.perf_counter()
            merge_live(session, MergeSettings(method, weights, dict(params)))
            times.append((time.perf_counter() - tick) * 1000)
        timings[method] = times
        print(f"handler {method}: median {statistics.median(times):.0f} ms")
    return timings, session.live_plan.reason


def bench_api(n: int, family: str) -> dict[str, list[float]]:
    from gradio_client import Client

    from app import create_app
    from ui.hosting import HostConfig

    choice, labels, methods = family_choice(family)
    if family == "zoo":
        methods = {"ties": METHODS["ties"]}
    demo = create_app(HostConfig.detect(hosted=False, models_dir=Path(tempfile.mkdtemp(prefix="bench-live-"))))
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False)
        print(client.predict(*choice, None, api_name="/preflight").splitlines()[-1])
        client.predict({"method": "ties", "weights": [0.5] * len(labels), "params": {"density": 0.5}},
                       api_name="/merge")
        timings = {}
        for method, params in methods.items():
            times = []
            for weights in moves(n, len(labels)):
                tick = time.perf_counter()
                client.predict({"method": method, "weights": weights, "params": dict(params)}, api_name="/merge")
                times.append((time.perf_counter() - tick) * 1000)
            timings[method] = times
            print(f"/merge {method}: median {statistics.median(times):.0f} ms")
        return timings
    finally:
        demo.close()


def bench_scoring_135m(per_task: int = 2) -> None:
    """Evaluate and a 2-point ties sweep on the 135M family (both need live merging, which the old element cap
    refused at this size), with a 4-prompt task set; prints the seconds."""
    import json

    from ui import evaluate_panel, merge_panel, models_panel
    from ui.hosting import HostConfig
    from ui.session import new_session

    choice, _labels, _methods = family_choice("135m")
    _base, experts = family_135m()
    tasks = Path(tempfile.mkdtemp(prefix="bench-live-")) / "tasks.jsonl"
    rows = [("capital", "The capital of France is", "Paris", experts[0].name),
            ("capital", "The capital of Italy is", "Rome", experts[0].name),
            ("sum", "2+2=", "4", experts[1].name), ("sum", "3+4=", "7", experts[1].name)]
    tasks.write_text("".join(json.dumps({"task": t, "prompt": p, "answer": a, "expert": e}) + "\n"
                             for t, p, a, e in rows), encoding="utf-8")
    config = HostConfig.detect(hosted=False, models_dir=Path(tempfile.mkdtemp(prefix="bench-live-")))
    session = new_session()
    models_panel.check_models(session, config, models_panel.ModelsChoice(*choice))
    merge_panel.run_merge(session, config, {"method": "ties", "weights": [0.5, 0.5], "params": {"density": 0.5}})
    tick = time.perf_counter()
    evaluate_panel.evaluate(session, config, str(tasks), per_task)
    print(f"evaluate (experts' answers + the merge, {len(rows)} prompts): {time.perf_counter() - tick:.1f} s")
    tick = time.perf_counter()
    result = evaluate_panel.sweep(session, config, "ties", "0.5,1.0", "0.5", "agreement", per_task, str(tasks))
    print(f"sweep, {len(result.points)} points (experts' answers reused): {time.perf_counter() - tick:.1f} s")


# --- the floor: the same moves as a fewest-pass torch loop over the same tensors -----------------------------------

def floor_thresholds(base: dict, experts: list[dict], density: float) -> dict:
    """Per tensor and expert, the |delta| magnitude that keeps `density` of the entries: found once per density,
    outside the timed moves (as LiveMerger keeps them per density across weight moves)."""
    import torch

    found = {}
    for name, b in base.items():
        k = max(1, int(density * b.numel()))
        found[name] = [float(torch.topk((x[name] - b).abs().reshape(-1), k, sorted=False).values.min())
                       for x in experts]
    return found


def floor_move(method: str, weights: list[float], density: float, base: dict, experts: list[dict], targets: dict,
               thresholds: dict | None, seed: int = 0) -> None:
    """One slider move with the fewest torch passes we could write, straight into `targets` (float32, in place).
    task_arithmetic: out = (1 - sum w) base + sum w_i x_i (3 passes). ties / dare_ties: per expert the delta (one
    pass), pruned at the cached threshold (ties) or by a fresh Bernoulli mask, rescaled (dare), weighted; the
    elected sign and the disjoint mean; the base added."""
    import torch

    for name, b in base.items():
        out = targets[name]
        if method == "task_arithmetic":
            torch.mul(b, 1.0 - sum(weights), out=out)
            for x, w in zip(experts, weights):
                out.add_(x[name], alpha=w)
            continue
        if method == "task_arithmetic exact":  # the engine's rounding: base + sum of w_i (x_i - base), op by op
            mixed = torch.sub(experts[0][name], b).mul_(weights[0])
            for x, w in zip(experts[1:], weights[1:]):
                mixed.add_(torch.sub(x[name], b).mul_(w))
            torch.add(b, mixed, out=out)
            continue
        generator = torch.Generator().manual_seed(seed)
        deltas = []
        for i, (x, w) in enumerate(zip(experts, weights)):
            delta = torch.sub(x[name], b)
            if thresholds is not None:
                delta = torch.where(delta.abs() >= thresholds[name][i], delta, 0.0)
            else:
                delta.mul_(torch.rand(delta.shape, generator=generator) < density).mul_(w / density)
                w = 1.0
            deltas.append(delta.mul_(w) if w != 1.0 else delta)
        sign = torch.stack(deltas).sum(0).sign_()
        mixed, divisor = torch.zeros_like(b), torch.zeros_like(b)
        for delta, w in zip(deltas, weights):
            agree = torch.sign(delta).eq_(sign)
            mixed.addcmul_(delta, agree)
            divisor.add_(agree, alpha=w)
        if thresholds is not None:  # ties normalises by the agreeing weights
            mixed.div_(divisor.masked_fill_(divisor == 0, 1.0))
        torch.add(b, mixed, out=out)


def bench_floor(n: int, family: str) -> dict[str, tuple[list[float], list[float]]]:
    """The page's handler (merge_live into the session's chat model) and the floor loop, move for move, in one
    process and one thread, interleaved so the load hits both alike. Returns method -> (handler ms, floor ms)."""
    import torch

    from merging.settings import MergeSettings
    from ui import models_panel
    from ui.hosting import HostConfig
    from ui.session import new_session
    from ui.workspace import merge_live

    choice, labels, methods = family_choice(family)
    session = new_session()
    models_panel.check_models(session, HostConfig.detect(hosted=False, models_dir=Path(tempfile.mkdtemp())),
                              models_panel.ModelsChoice(*choice))
    if session.live is None:
        raise SystemExit(f"live merging is off: {session.live_plan.reason}")
    live = session.live
    base = {n_: t.float() for n_, t in live.base.items()}
    experts = [{n_: t.float() for n_, t in live.models[k].items()} for k in labels]
    targets = {n_: torch.empty_like(t) for n_, t in base.items()}
    merge_live(session, MergeSettings("task_arithmetic", [0.5] * len(labels)))
    results, exact = {}, []
    torch.set_num_threads(1)
    for method, params in methods.items():
        density = float(params.get("density", 1.0))
        thresholds = floor_thresholds(base, experts, density) if method == "ties" else None
        handler, floor = [], []
        for index, weights in enumerate([[0.5] * len(labels)] + moves(n, len(labels))):
            tick = time.perf_counter()
            merge_live(session, MergeSettings(method, weights, dict(params)))
            took = (time.perf_counter() - tick) * 1000
            tick = time.perf_counter()
            floor_move(method, weights, density, base, experts, targets, thresholds)
            floor_took = (time.perf_counter() - tick) * 1000
            if method == "task_arithmetic":
                tick = time.perf_counter()
                floor_move("task_arithmetic exact", weights, density, base, experts, targets, None)
                exact.append((time.perf_counter() - tick) * 1000)
            if index:  # the first move of a method finds its thresholds (both paths): not a weight move
                handler.append(took)
                floor.append(floor_took)
        results[method] = (handler, floor)
        if exact:
            results["task_arithmetic, floor with the engine's rounding"] = (handler, exact[1:])
            exact = []
        print(f"{method}: handler {statistics.median(handler):.0f} ms, floor {statistics.median(floor):.0f} ms, "
              f"{statistics.median(handler) / statistics.median(floor):.2f}x", flush=True)
    return results


def floor_section(family: str, results: dict, load: tuple[float, float]) -> str:
    from bench.machine import machine

    rows = ["| method | moves | page's path median ms | fewest-pass floor median ms | ratio |", "|---|---|---|---|---|"]
    for method, (handler, floor) in results.items():
        ratio = statistics.median(handler) / statistics.median(floor)
        rows.append(f"| {method} | {len(handler)} | {statistics.median(handler):.0f} | "
                    f"{statistics.median(floor):.0f} | {ratio:.2f}x |")
    return "\n".join([
        FLOOR_SECTIONS[family], "",
        (f"`bench/bench_live.py --family {family} --floor` moves a weight slider through the page's own handler "
        "(`ui.workspace.merge_live`: the recipe from the controls, `LiveMerger.merge_into` the session's chat model) "
        "and, move for move in the same process and one thread, through a fewest-pass torch loop over the same "
        "float32 tensors written in place (`floor_move` in the script: task arithmetic as (1 - sum w) base + sum w_i "
        "x_i, 3 passes, and, as its own row, op by op with the engine's rounding, base + sum of w_i (x_i - base); "
         "ties with its thresholds found once per density as the app keeps them; dare_ties drawing its masks "
        "every move). Density 0.5; the first move of each method (it finds thresholds) is not counted. "
        "Target (issue 19): every method within 1.5x of the floor."), "",
        (f"Machine: {machine()}; recorded {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average before / "
        f"after {load[0]:.1f} / {load[1]:.1f}."), "",
        *rows, "",
    ])


def tensor_count(family: str) -> tuple[int, int]:
    from merging.sources import open_model
    from zoo import families

    base = {"zoo": lambda: families()["lm"].base, "smollm2": lambda: families()["smollm2"].base,
            "135m": lambda: family_135m()[0]}[family]()
    with open_model(base) as source:
        names = source.tensor_names()
        return len(names), sum(source.nbytes(n) // source.dtype(n).itemsize for n in names)


def report(family: str, handlers: dict[str, list[float]], api: dict[str, list[float]], imports_s: float,
           load: tuple[float, float], plan: str, device: str) -> str:
    import torch

    tensors, params = tensor_count(family)
    rows = ["| path | method | moves | median ms | p90 ms | max ms |", "|---|---|---|---|---|---|"]
    for method, times in handlers.items():
        rows.append(f"| handler (merge into the chat model, in place) | {method} | {len(times)} | "
                    f"{statistics.median(times):.0f} | {percentile(times, 0.9):.0f} | {max(times):.0f} |")
    for method, times in api.items():
        rows.append(f"| gradio_client → /merge (queue + HTTP + the above) | {method} | {len(times)} | "
                    f"{statistics.median(times):.0f} | {percentile(times, 0.9):.0f} | {max(times):.0f} |")
    if family == "zoo":
        worst = max(statistics.median(t) for t in handlers.values())
        verdict = (f"Slowest handler median {worst:.0f} ms: **{'under' if worst < TARGET_MS else 'OVER'} the "
                   f"{TARGET_MS:.0f} ms target**.")
        what = (f"the LM zoo (base + {', '.join(EXPERTS)}: {tensors} tensors, {params / 1e6:.2f} M parameters each)")
        command = ".venv/bin/python bench/bench_live.py --record"
    else:
        verdict = " ".join(
            f"{m} through /merge: median {statistics.median(api[m]):.0f} ms, "
            f"**{'under' if statistics.median(api[m]) < t else 'OVER'} the {t / 1000:g} s target**."
            for m, t in TARGETS_135M_MS.items() if m in api)
        what = (f"a bf16 family of SmolLM2-135M's shape ({tensors} tensors, {params / 1e6:.1f} M parameters each; "
                "base + 2 synthetic experts, see the script)") if family == "135m" else (
            f"the SmolLM2 family as `python -m zoo build smollm2` builds it ({tensors} tensors, {params / 1e6:.1f} M "
            f"parameters each, float32 folders; base + {', '.join(SMOLLM2_EXPERTS)})")
        verdict += (" A method's first move (and a density move) finds the magnitude thresholds; weight moves "
                    "after it reuse them (LiveMerger keeps them per density), so the max column is that first move. "
                    "The figures scale with the load: on 2 cores at a load average above 10 the merge gets a "
                    "fraction of one core.")
        command = f".venv/bin/python bench/bench_live.py --family {family} --moves {len(next(iter(api.values())))} " \
                  f"{'--device ' + device + ' ' if device != 'cpu' else ''}--record"
    return "\n".join([
        SECTIONS[family],
        "",
        (f"`bench/bench_live.py` times what happens when a weight or density slider moves in the app with {what}: "
         "the recipe is built from the controls and `LiveMerger.merge_into` writes the merge straight into the "
         "session's chat model (its parameters, in place; each tensor by the engine's own method call on the "
         "sources kept in their dtype). Then the same move end to end through the running app's `/merge` endpoint."),
        "",
        (f"Machine: {platform.machine()}, {os.cpu_count()} cores, device {device}, torch {torch.__version__}, Python "
         f"{platform.python_version()}; recorded {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
         f"Load average before / after: {load[0]:.1f} / {load[1]:.1f} (the cores are shared, so times are noisy). "
         f"Memory plan: {plan}."),
        "",
        f"Command: `{command}`",
        "",
        *rows,
        "",
        f"Imports (torch, transformers, gradio): {imports_s:.1f} s, once per process. {verdict}",
        "",
    ])


def record(section: str, family: str, heading: str | None = None) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(heading or SECTIONS[family]) + r"\n.*?(?=\n## |\Z)", re.DOTALL)
    text = pattern.sub(section.rstrip() + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text, encoding="utf-8")
    print(f"recorded in {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=sorted(SECTIONS), default="zoo")
    parser.add_argument("--moves", type=int, default=None, help="slider moves per method (zoo 30, 135m 5)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the app's choice)")
    parser.add_argument("--skip-api", action="store_true", help="time the handlers only")
    parser.add_argument("--scoring", action="store_true",
                        help="135m only: time Evaluate and a 2-point sweep instead (prints, records nothing)")
    parser.add_argument("--floor", action="store_true",
                        help="the handler against a fewest-pass torch loop, move for move (prints; --record records)")
    parser.add_argument("--record", action="store_true", help="write the section into docs/benchmarks.md")
    args = parser.parse_args()
    moves_n = args.moves or (30 if args.family == "zoo" else 5)
    if args.floor:
        load_before = os.getloadavg()[0]
        section = floor_section(args.family, bench_floor(moves_n, args.family), (load_before, os.getloadavg()[0]))
        print(section)
        if args.record:
            record(section, args.family, FLOOR_SECTIONS[args.family])
        return
    if args.family == "135m":
        family_135m()  # made once, before the clock
    if args.scoring:
        bench_scoring_135m()
        return
    load_before = os.getloadavg()[0]
    tick = time.perf_counter()
    import gradio  # noqa: F401
    import transformers  # noqa: F401

    import ui.page  # noqa: F401
    from ui.resources import device

    imports_s = time.perf_counter() - tick
    handlers, plan = bench_handlers(moves_n, args.family, args.device)
    api = {} if args.skip_api else bench_api(moves_n, args.family)
    section = report(args.family, handlers, api, imports_s, (load_before, os.getloadavg()[0]), plan,
                     args.device or device())
    print(section)
    if args.record:
        record(section, args.family)


if __name__ == "__main__":
    main()
