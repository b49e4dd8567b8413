"""Merge engine vs mergekit: wall time, peak memory and ratio to an I/O floor, on synthetic Llama-shaped models.

    .venv/bin/python bench/bench_engine.py [--sizes 125m,700m] [--device cpu|cuda] [--methods ties,slerp]
                                           [--record docs/benchmarks.md] [--workdir DIR] [--keep]

For each size it writes a base and two fine-tunes (bf16, random weights; fine-tune = base + small noise) as
safetensors, then runs, each in its own process (peak RSS from wait4's rusage, so every run is measured alike):
  - the I/O floor: read every tensor of the three inputs and write one model (no arithmetic);
  - `python -m merging run` and `mergekit-yaml` for each method.
Inputs stay in the page cache across runs (the floor runs first to warm it), so the figures compare CPU work and
memory, not the disk. Never run in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {  # name -> (hidden, intermediate, layers, heads, kv_heads, vocab)
    "125m": (768, 2048, 12, 12, 4, 32000),
    "700m": (1536, 4096, 20, 12, 4, 32000),
    "tiny": (64, 128, 2, 4, 2, 1000),  # smoke test of the script itself
}
METHODS = {  # name -> (uses base as an input, per-model parameters, global parameters)
    "linear": (False, {"weight": 0.5}, {}),
    "task_arithmetic": (True, {"weight": 0.5}, {}),
    "ties": (True, {"weight": 0.5, "density": 0.5}, {}),
    "dare_ties": (True, {"weight": 0.5, "density": 0.5}, {}),
    "sce": (True, {}, {"select_topk": 0.5}),
    "slerp": (True, {}, {"t": 0.5}),
}


@dataclass
class Run:
    label: str
    seconds: float
    peak_rss_mb: float
    ok: bool
    detail: str = ""
    output: str = ""


# --- synthetic models -----------------------------------------------------------------------------------------


def llama_tensors(hidden: int, inter: int, layers: int, heads: int, kv: int, vocab: int) -> list[tuple[str, tuple]]:
    head_dim = hidden // heads
    shapes = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", (hidden,)),
            (p + "self_attn.q_proj.weight", (hidden, hidden)),
            (p + "self_attn.k_proj.weight", (kv * head_dim, hidden)),
            (p + "self_attn.v_proj.weight", (kv * head_dim, hidden)),
            (p + "self_attn.o_proj.weight", (hidden, hidden)),
            (p + "post_attention_layernorm.weight", (hidden,)),
            (p + "mlp.gate_proj.weight", (inter, hidden)),
            (p + "mlp.up_proj.weight", (inter, hidden)),
            (p + "mlp.down_proj.weight", (hidden, inter)),
        ]
    return shapes + [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]


def build_models(root: Path, size: str) -> tuple[Path, Path, Path, int]:
    """Base and two fine-tunes under root/size; returns their folders and the parameter count."""
    import torch
    from transformers import LlamaConfig

    from merging.shards import PlannedTensor, ShardWriter, plan_shards

    hidden, inter, layers, heads, kv, vocab = SIZES[size]
    spec = llama_tensors(hidden, inter, layers, heads, kv, vocab)
    folders = [root / size / name for name in ("base", "ft1", "ft2")]
    params = sum(torch.Size(s).numel() for _, s in spec)
    if all((f / "config.json").is_file() for f in folders):
        return (*folders, params)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab,
                         tie_word_embeddings=False, dtype="bfloat16", architectures=["LlamaForCausalLM"])
    shards = plan_shards([PlannedTensor(n, s, torch.bfloat16) for n, s in spec], 2 * 10**9)
    writers = []
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        writers.append(ShardWriter(folder, shards))
    gen = torch.Generator().manual_seed(0)
    for name, shape in spec:
        base = torch.randn(shape, generator=gen) * 0.02 + (1.0 if name.endswith("norm.weight") else 0.0)
        writers[0].write(name, base.to(torch.bfloat16))
        for writer in writers[1:]:
            writer.write(name, (base + torch.randn(shape, generator=gen) * 0.002).to(torch.bfloat16))
    for folder, writer in zip(folders, writers):
        writer.finish()
        config.save_pretrained(folder)
    return (*folders, params)


def write_recipe(path: Path, method: str, base: Path, ft1: Path, ft2: Path) -> None:
    import yaml

    uses_base, model_params, global_params = METHODS[method]
    if method == "slerp":
        models = [{"model": str(base)}, {"model": str(ft1)}]
    else:
        models = [{"model": str(m), **({"parameters": dict(model_params)} if model_params else {})} for m in (ft1, ft2)]
    recipe = {"merge_method": method, "models": models, "dtype": "bfloat16"}
    if uses_base:
        recipe["base_model"] = str(base)
    if global_params:
        recipe["parameters"] = dict(global_params)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))


# --- measured runs ----------------------------------------------------------------------------------------------


# Linux carries a process's peak RSS across exec, so a child started straight from this (large) process would report
# at least this process's size (measured: `python -c pass` from a 600 MB parent reports 610 MB). A small launcher
# forks the measured command instead and reports that child's own peak from wait4.
_LAUNCHER = """import json, os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as report:
    json.dump({"exit": os.waitstatus_to_exitcode(status), "peak_kb": usage.ru_maxrss}, report)
"""


def measure(label: str, cmd: list[str], env: dict[str, str]) -> Run:
    """Run `cmd` as a child and report its wall time and peak RSS (that child alone, through _LAUNCHER)."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "usage.json"
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _LAUNCHER, str(report), *cmd], check=False, cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - started
        usage = json.loads(report.read_text())
    output = proc.stdout.decode(errors="replace")
    ok = usage["exit"] == 0
    tail = output.strip().splitlines()[-1:] if not ok else []
    return Run(label, seconds, usage["peak_kb"] / 1024, ok, tail[0][:160] if tail else "", output)


def best(runs: list[Run]) -> Run:
    """The fastest successful run (a failed one if all failed), with the highest peak memory of them all."""
    ok = [r for r in runs if r.ok] or runs
    fastest = min(ok, key=lambda r: r.seconds)
    return Run(fastest.label, fastest.seconds, max(r.peak_rss_mb for r in runs), fastest.ok, fastest.detail,
               fastest.output)


def method_seconds(run: Run) -> float | None:
    """Seconds spent inside the method functions, from `python -m merging run`'s summary line."""
    import re

    found = re.search(r"merge ([0-9.]+) s", run.output)
    return float(found.group(1)) if found else None


def floor_command(out: Path, inputs: list[Path], device: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "_floor", str(out), device, *map(str, inputs)]


def io_floor(out: Path, device: str, inputs: list[str]) -> None:
    """Read every tensor of every input (moving it to the device and back when on cuda), write the first model."""
    import torch

    from merging.shards import PlannedTensor, ShardWriter, plan_shards
    from merging.sources import open_model

    sources = [open_model(p) for p in inputs]
    names = sources[0].tensor_names()
    shards = plan_shards([PlannedTensor(n, sources[0].shape(n), sources[0].dtype(n)) for n in names], 2 * 10**9)
    out.mkdir(parents=True)
    writer = ShardWriter(out, shards)
    for name in names:
        tensors = [s.get(name) for s in sources]
        if device != "cpu":
            tensors = [t.to(device) for t in tensors]
            torch.cuda.synchronize()
        writer.write(name, tensors[0].to("cpu"))
    writer.finish()


def run_size(size: str, args: argparse.Namespace, workdir: Path) -> tuple[dict, list[dict]]:
    t0 = time.perf_counter()
    base, ft1, ft2, params = build_models(workdir / "models", size)
    build_s = time.perf_counter() - t0
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": pythonpath, "TQDM_DISABLE": "1"}
    mergekit = [sys.executable, "-m", "mergekit.scripts.run_yaml"]  # = mergekit-yaml, wherever it is installed
    outs = workdir / "outs"

    def fresh(name: str) -> Path:
        path = outs / name
        shutil.rmtree(path, ignore_errors=True)
        return path

    def measure_floor(n: int) -> Run:
        return measure(f"floor{n}", floor_command(fresh(f"floor{n}"), [base, ft1, ft2][:n], args.device), env)

    # Warm the page cache. On a shared machine the load changes from minute to minute, so the floor is measured
    # again beside every method and each figure is the best of its runs (the least disturbed one).
    measure("warmup", floor_command(fresh("warm"), [base, ft1, ft2], args.device), env)
    floors: dict[int, list[Run]] = {2: [measure_floor(2)], 3: [measure_floor(3)]}
    print(f"[{size}] {params / 1e6:.0f}M params, built in {build_s:.0f} s; I/O floor 2 inputs "
          f"{floors[2][0].seconds:.1f} s, 3 inputs {floors[3][0].seconds:.1f} s", flush=True)
    rows = []
    for method in args.methods:
        recipe = workdir / f"{method}.yaml"
        write_recipe(recipe, method, base, ft1, ft2)
        n_inputs = 2 if method in ("linear", "slerp") else 3
        floors[n_inputs].append(measure_floor(n_inputs))
        ours_cmd = [sys.executable, "-m", "merging", "run", str(recipe), str(fresh("ours")), "--quiet",
                    "--device", args.device]
        ours = best([measure("mergelab", ours_cmd, env) for _ in range(args.repeat)])
        kit_cmd = [*mergekit, str(recipe), str(fresh("kit")), "--quiet", "--no-copy-tokenizer"]
        kit_cmd += ["--cuda"] if args.device.startswith("cuda") else []
        kit = measure("mergekit", kit_cmd, env) if not args.no_mergekit else None
        floor = best(floors[n_inputs])
        row = {"method": method, "inputs": n_inputs, "floor_s": floor.seconds, "ours_s": ours.seconds,
               "ours_ok": ours.ok, "ours_mb": ours.peak_rss_mb, "ratio": ours.seconds / floor.seconds,
               "method_s": method_seconds(ours),
               "kit_s": kit.seconds if kit else None, "kit_ok": kit.ok if kit else None,
               "kit_mb": kit.peak_rss_mb if kit else None, "detail": ours.detail or (kit.detail if kit else "")}
        rows.append(row)
        print(f"[{size}] {method:16s} ours {ours.seconds:6.1f} s (method fns {row['method_s']} s) "
              f"{ours.peak_rss_mb:7.0f} MB "
              f"(x{row['ratio']:.2f} floor){'' if ours.ok else ' FAILED: ' + ours.detail} | "
              + (f"mergekit {kit.seconds:6.1f} s {kit.peak_rss_mb:7.0f} MB{'' if kit.ok else ' FAILED: ' + kit.detail}"
                 if kit else "mergekit skipped"), flush=True)
    for row in rows:  # against the best floor of the whole run: the most conservative ratio
        row["ratio"] = row["ours_s"] / best(floors[row["inputs"]]).seconds
    summary = {"size": size, "params": params, "model_mb": params * 2 / 1e6,
               "floor2_s": best(floors[2]).seconds, "floor3_s": best(floors[3]).seconds,
               "floor3_mb": max(r.peak_rss_mb for r in floors[3])}
    return summary, rows


# --- the record -------------------------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import psutil
    import torch

    text = (f"{cpu}, {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
            f"torch {torch.__version__}, Python {platform.python_version()}")
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


INTRO = """## Merge engine vs mergekit

`bench/bench_engine.py` builds a base and two fine-tunes (bf16, random weights, Llama-shaped: 12 layers of 768 for
125m, 20 of 1536 for 700m, vocabulary 32000) and runs each method with `python -m merging run` and with mergekit
0.1.5's `mergekit-yaml`, each in its own process (peak memory = that process's maximum resident set, from `wait4`).
The I/O floor reads every tensor of the inputs and writes one model, with no arithmetic; *x floor* is our time over
the best floor of the run with the same number of inputs (2 for linear and slerp, 3 otherwise). *In method fns* is
the time spent inside the merge functions of merging/methods (another package); *engine x floor* leaves it out, the
rest being reading, casting and writing (partly overlapped) and process start. Inputs sit in the page cache (the
floor runs first to warm it), so this compares CPU work and memory, not the disk. Times include starting Python and
torch (a few seconds, more on a busy machine). A device's block is replaced when re-run.
"""


def markdown(summaries: list[dict], rows: dict[str, list[dict]], args: argparse.Namespace, load: tuple) -> str:
    busy = os.cpu_count() is not None and os.cpu_count() <= 4 and max(load) > os.cpu_count()
    lines = [
        f"### On {args.device}: {machine()}",
        "",
        f"Recorded {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average before / after "
        f"{load[0]:.1f} / {load[1]:.1f}"
        + (" (the cores were shared with other engineers' test runs, so absolute times are noisy)." if busy else "."),
        "Command: `.venv/bin/python bench/bench_engine.py --sizes " + ",".join(args.sizes)
        + f" --device {args.device} --repeat {args.repeat} --record docs/benchmarks.md`; floor and MergeLab times are "
        "the best of their runs, mergekit ran once per method.",
        "",
    ]
    for s in summaries:
        lines += [
            (f"#### {s['size']} ({s['params'] / 1e6:.0f}M parameters, {s['model_mb']:.0f} MB per model) "
             f"on {args.device}"),
            "",
            (f"I/O floor: {s['floor2_s']:.1f} s with 2 inputs, {s['floor3_s']:.1f} s with 3 "
             f"(peak {s['floor3_mb']:.0f} MB)."),
            "",
            ("| method | MergeLab s | x floor | in method fns s | engine x floor | MergeLab peak MB | mergekit s "
             "| mergekit peak MB | memory vs mergekit |"),
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows[s["size"]]:
            ours = f"{r['ours_s']:.1f}" if r["ours_ok"] else f"failed ({r['detail']})"
            kit = "–" if r["kit_s"] is None else (f"{r['kit_s']:.1f}" if r["kit_ok"] else f"failed ({r['detail']})")
            kit_mb = "–" if r["kit_mb"] is None else f"{r['kit_mb']:.0f}"
            mem = f"{r['ours_mb'] / r['kit_mb']:.2f}x" if r["kit_mb"] and r["kit_ok"] and r["ours_ok"] else "–"
            in_fns = engine = "–"
            if r.get("method_s") is not None:
                in_fns = f"{r['method_s']:.1f}"
                engine = f"{r['ratio'] * (r['ours_s'] - r['method_s']) / r['ours_s']:.2f}"
            lines.append(f"| {r['method']} | {ours} | {r['ratio']:.2f} | {in_fns} | {engine} | {r['ours_mb']:.0f} "
                         f"| {kit} | {kit_mb} | {mem} |")
        lines.append("")
    return "\n".join(lines)


def record(path: Path, device: str, block: str) -> None:
    """Put this device's block into our section of the shared benchmarks page (others own the sections after it)."""
    heading = "## Merge engine vs mergekit"
    begin, end = f"<!-- bench_engine {device} -->", f"<!-- /bench_engine {device} -->"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    if heading not in text:  # our section goes first, before the other benchmarks' sections
        first = text.find("\n## ")
        first = len(text) if first == -1 else first + 1
        text = text[:first].rstrip() + "\n\n" + INTRO + "\n" + text[first:]
    start = text.index(heading)
    section_end = text.find("\n## ", start + len(heading))
    section_end = len(text) if section_end == -1 else section_end + 1
    section = text[start:section_end]
    wrapped = f"{begin}\n{block.strip()}\n{end}\n"
    if begin in section and end in section:
        section = section[:section.index(begin)] + wrapped + section[section.index(end) + len(end) + 1:]
    else:
        section = section.rstrip() + "\n\n" + wrapped
    path.write_text(text[:start] + section.rstrip() + "\n" + ("\n" + text[section_end:] if section_end < len(text)
                                                            else ""), encoding="utf-8")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_floor":
        io_floor(Path(sys.argv[2]), sys.argv[3], sys.argv[4:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="125m", type=lambda s: s.split(","),
                        help="comma list of " + ", ".join(SIZES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", default=",".join(METHODS), type=lambda s: s.split(","))
    parser.add_argument("--record", default=None, help="markdown file to write our section into")
    parser.add_argument("--workdir", default=None, help="where models are built (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the built models")
    parser.add_argument("--no-mergekit", action="store_true", help="skip the mergekit runs")
    parser.add_argument("--repeat", type=int, default=1, help="runs of our engine per method (the best is kept)")
    args = parser.parse_args()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_engine_"))
    load_before = os.getloadavg()[0]
    summaries, rows = [], {}
    try:
        for size in args.sizes:
            summary, size_rows = run_size(size, args, workdir)
            summaries.append(summary)
            rows[size] = size_rows
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    block = markdown(summaries, rows, args, (load_before, os.getloadavg()[0]))
    print(block)
    print(json.dumps({"summaries": summaries, "rows": rows}, indent=1))
    if args.record:
        record(Path(args.record), args.device, block)


if __name__ == "__main__":
    main()
