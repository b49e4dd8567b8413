"""Everything that needs a GPU, in one process and without network (issue 19): a Mistral-7B-shaped base and two
experts made on the device (bf16, random weights plus small random task vectors, Mistral-7B-v0.1's real config and
the tiny zoo's tokenizer from assets/), then, through the app's own code paths:

  plan     the live memory plan (merging.live.plan_for_states) and which sources it holds where;
  live     live re-merge into the chat model's parameters (LiveMerger.merge_into, as the page's merge does):
           task_arithmetic, ties (density 0.5), dare_ties (density 0.5), median of --repeats moves each;
  score    batched greedy generation of --prompts prompts x --new-tokens tokens (inference.generate_batch, the
           scorer Evaluate uses) and, for comparison, transformers' generate with a static KV cache (compiled on
           cuda by transformers itself);
  sweep    a --points weight sweep end to end: merge into the chat model + score per point;
  folder   `python -m merging run --device DEVICE` of the same recipe to a folder, against the I/O floor (reading
           the sources and writing one model with safetensors alone);
  8bit/4bit  bitsandbytes loading and a chat reply of a merged folder (1B-shaped; cuda only);
and the peak memory of each step. Prints one table and the rows for docs/benchmarks.md.

    .venv/bin/python bench/gpu_check.py                                   # on a GPU host: 7B-shaped, cuda
    .venv/bin/python bench/gpu_check.py --device cpu --shape 1b --points 2  # the CPU rehearsal (a few minutes)
    .venv/bin/python bench/gpu_check.py --device cpu --shape tiny --points 2  # what the test suite runs

Random weights make no sense of the prompts: the figures are times and memory, not answers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

TOKENIZER = ROOT / "assets" / "zoo" / "lm" / "base"  # shipped with the repo: works offline on any host
# Mistral-7B-v0.1's config.json (https://huggingface.co/mistralai/Mistral-7B-v0.1), as published.
MISTRAL_7B = {
    "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 32768,
    "model_type": "mistral", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "vocab_size": 32000,
}
SHAPES = {
    "7b": {},
    "1b": {"hidden_size": 2048, "intermediate_size": 7168, "num_hidden_layers": 16, "num_attention_heads": 16,
           "num_key_value_heads": 4},  # about 1.0 B parameters
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
}
# (prompts, new tokens, batch, repeats, sweep prompts, sweep tokens) per device and shape: the GPU figures are
# the workload; the CPU ones keep the rehearsal to a few minutes on 2 cores.
WORKLOADS = {
    ("cuda", "7b"): (256, 256, 64, 5, 64, 64), ("cuda", "1b"): (256, 256, 64, 5, 64, 64),
    ("cuda", "tiny"): (256, 64, 64, 5, 64, 16),
    ("cpu", "7b"): (4, 2, 4, 1, 2, 2), ("cpu", "1b"): (32, 2, 32, 1, 4, 2), ("cpu", "tiny"): (32, 8, 32, 3, 8, 4),
}
METHODS = {"task_arithmetic": {}, "ties": {"density": 0.5}, "dare_ties": {"density": 0.5}}
TARGETS_S = {"task_arithmetic": 0.5, "ties": 3.0, "score": 60.0}  # one H100, 7B-shaped (issue 19)
EXPERTS = ("expert_a", "expert_b", "expert_c", "expert_d")  # --experts takes the first N (default 2)
TASK_VECTOR_STD = 0.002  # small next to the weights' 0.02: experts close to their base, as fine-tunes are


@dataclass
class Row:
    step: str
    what: str
    seconds: float | None
    peak_gb: float | None
    note: str = ""


# --- memory and timing --------------------------------------------------------------------------------------------

def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: str) -> float:
    """Peak GPU memory allocated since reset_peak (cuda), else the process's peak resident memory so far."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(device: str, work: Callable[[], object]) -> float:
    synchronize(device)
    tick = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - tick


# --- the family: made on the device -------------------------------------------------------------------------------

def model_config(shape: str):
    from transformers import MistralConfig

    return MistralConfig(**{**MISTRAL_7B, **SHAPES[shape]})


def make_family(shape: str, device: str, seed: int = 0, experts: int = 2):
    """(chat model, base state, {expert: state}) on `device` in bf16: a randomly initialised Mistral (the chat
    model, which live merges are written into), the base as a copy of its weights, experts = base + N(0, 0.002)."""
    from transformers import MistralForCausalLM

    torch.manual_seed(seed)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # made in bf16 directly: no float32 copy of a 7B model first
    try:
        with torch.device(device):
            model = MistralForCausalLM(model_config(shape)).eval()
    finally:
        torch.set_default_dtype(before)
    base = {n: t.detach().clone() for n, t in model.state_dict().items()}
    generator = torch.Generator(device=device).manual_seed(seed + 1)
    made = {}
    for key in EXPERTS[:experts]:
        made[key] = {n: (w.float() + TASK_VECTOR_STD * torch.randn(w.shape, generator=generator, device=device)
                            ).to(w.dtype) for n, w in base.items()}
    return model, base, made


def recipe_for(method: str, weights: tuple[float, ...], experts: tuple[str, ...] | None = None,
               base: str = "base") -> object:
    """The recipe of one move: expert i at weights[i] (experts: the first len(weights) of EXPERTS unless given)."""
    from merging.recipe import Recipe

    params = METHODS[method]
    experts = experts or EXPERTS[:len(weights)]
    models = [{"model": e, "parameters": {"weight": w, **params}} for e, w in zip(experts, weights)]
    return Recipe.from_dict({"merge_method": method, "base_model": base, "models": models,
                             "dtype": "float32", "out_dtype": "bfloat16"})  # as the page's recipes: float32 compute


# --- the steps ----------------------------------------------------------------------------------------------------

def live_remerge(merger, model, device: str, repeats: int) -> list[Row]:
    """Each method: a first move (finds the magnitude thresholds), then `repeats` weight moves, median."""
    rows = []
    targets = model.state_dict()
    others = (0.6,) * (len(merger.models) - 1)
    for method in METHODS:
        reset_peak(device)
        first = timed(device, lambda m=method: merger.merge_into(targets, recipe_for(m, (0.5, *others))))
        times = [timed(device, lambda m=method, i=i: merger.merge_into(targets, recipe_for(m, (0.3 + 0.1 * i,
                                                                                               *others))))
                 for i in range(repeats)]
        target = TARGETS_S.get(method)
        rows.append(Row("live", f"{method} re-merge into the chat model (median of {repeats}; first {first:.2f} s)",
                        statistics.median(times), peak_gb(device), f"target < {target:g} s" if target else ""))
    return rows


def prompts(count: int) -> list[str]:
    return [f"Q: {i % 97} + {(i * 7) % 89} = ? Answer: " for i in range(count)]


def score(model, tokenizer, device: str, count: int, new_tokens: int, batch: int) -> Row:
    from inference.generation import generate_batch

    reset_peak(device)
    seconds = timed(device, lambda: generate_batch(model, tokenizer, prompts(count), new_tokens, batch_size=batch))
    return Row("score", f"generate_batch: {count} prompts x {new_tokens} new tokens, batch {batch}", seconds,
               peak_gb(device), f"target < {TARGETS_S['score']:g} s" if count >= 256 else "")


def score_static(model, tokenizer, device: str, count: int, new_tokens: int, batch: int) -> Row:
    """transformers' generate with a static KV cache (on cuda transformers compiles the forward pass itself for a
    static cache): what the app's own loop could gain. One batch first (with the compile on cuda: its time in the
    note), then all prompts are timed, every row run to `new_tokens`."""
    encoded = [tokenizer(prompts(count)[i:i + batch], return_tensors="pt", padding=True).to(device)
               for i in range(0, count, batch)]

    def generate(enc) -> None:
        model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                       cache_implementation="static", pad_token_id=tokenizer.pad_token_id)

    warm = timed(device, lambda: generate(encoded[0]))
    reset_peak(device)
    seconds = timed(device, lambda: [generate(enc) for enc in encoded])
    compiled = device.startswith("cuda")
    how = "static KV cache, compiled by transformers" if compiled else "static KV cache"
    return Row("score", f"transformers generate, {how}: {count} x {new_tokens}, batch {batch} (not the app's path)",
               seconds, peak_gb(device), f"first batch{' (compiling)' if compiled else ''} {warm:.1f} s")


def sweep(merger, model, tokenizer, device: str, points: int, count: int, new_tokens: int, batch: int) -> Row:
    """A weight sweep end to end: per point, task arithmetic at weight w (both experts) merged into the chat model,
    then `count` prompts scored."""
    from inference.generation import generate_batch

    targets = model.state_dict()
    weights = [0.2 + 0.8 * i / max(1, points - 1) for i in range(points)]
    reset_peak(device)

    def run() -> None:
        for w in weights:
            merger.merge_into(targets, recipe_for("task_arithmetic", (w,) * len(merger.models)))
            generate_batch(model, tokenizer, prompts(count), new_tokens, batch_size=batch)

    seconds = timed(device, run)
    return Row("sweep", f"{points}-point weight sweep (merge + {count} prompts x {new_tokens} tokens per point)",
               seconds, peak_gb(device), f"{seconds / points:.2f} s per point")


# --- to a folder ----------------------------------------------------------------------------------------------------

def write_sources(root: Path, shape: str, states: dict[str, dict[str, torch.Tensor]]) -> dict[str, Path]:
    """Each source as a model folder (config.json, one safetensors file, the shipped tokenizer)."""
    from safetensors.torch import save_file

    folders = {}
    for key, state in states.items():
        folder = root / key
        folder.mkdir(parents=True, exist_ok=True)
        save_file({n: t.detach().to("cpu").contiguous() for n, t in state.items()}, str(folder / "model.safetensors"),
                  metadata={"format": "pt"})
        model_config(shape).save_pretrained(folder)
        for file in TOKENIZER.iterdir():
            if file.name.startswith(("tokenizer", "chat_template", "special_tokens")):
                shutil.copy2(file, folder / file.name)
        folders[key] = folder
    return folders


class PeakWatcher:
    """Peak memory of a child process while it runs: device-wide GPU memory in use above what it was at the start
    (cuda), or the child's own peak resident memory (VmHWM; exec starts it afresh, unlike ru_maxrss)."""

    def __init__(self, device: str, pid: int) -> None:
        self.device, self.pid, self.peak = device, pid, 0.0
        self.start = self._used() if device.startswith("cuda") else 0.0

    def _used(self) -> float:
        free, total = torch.cuda.mem_get_info(torch.device(self.device))
        return (total - free) / 2**30

    def sample(self) -> None:
        if self.device.startswith("cuda"):
            self.peak = max(self.peak, self._used() - self.start)
            return
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak = max(self.peak, int(line.split()[1]) / 2**20)
        except (OSError, ValueError):
            pass


def run_cli(recipe_path: Path, out: Path, device: str) -> tuple[float, float, str]:
    """`python -m merging run` as a user runs it: (seconds, peak GB, the last line it printed)."""
    command = [sys.executable, "-m", "merging", "run", str(recipe_path), str(out), "--device", device, "--quiet"]
    tick = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watcher = PeakWatcher(device, child.pid)
    while child.poll() is None:
        watcher.sample()
        time.sleep(0.1)
    seconds = time.perf_counter() - tick
    output = child.stdout.read() if child.stdout else ""
    if child.returncode != 0:
        raise RuntimeError(f"python -m merging run exited {child.returncode}: {output.strip()[-500:]}")
    return seconds, watcher.peak, (output.strip().splitlines() or [""])[-1]


def io_floor(sources: list[Path], out: Path) -> float:
    """Read every source with safetensors alone, and write one model of the output's size: no merging."""
    from safetensors.torch import load_file, save_file

    tick = time.perf_counter()
    last = {}
    for folder in sources:
        last = load_file(str(folder / "model.safetensors"))
    save_file(last, str(out))
    seconds = time.perf_counter() - tick
    out.unlink()
    return seconds


def folder_merge(root: Path, shape: str, device: str, states: dict[str, dict[str, torch.Tensor]]
                 ) -> tuple[list[Row], Path | None]:
    """Write the sources, merge them with the CLI (ties, density 0.5) and time the I/O floor beside it. Where the
    disk cannot hold the sources and the output, one expert fewer (said in the row)."""
    size = sum(t.numel() * t.element_size() for t in states["base"].values())
    experts = [k for k in EXPERTS if k in states]
    made = len(experts)
    while experts and shutil.disk_usage(root).free < size * (len(experts) + 2) * 1.1:
        experts.pop()
    if not experts:
        return [Row("folder", "python -m merging run", None, None,
                    f"skipped: {shutil.disk_usage(root).free / 2**30:.0f} GB free on disk, too little")], None
    folders = write_sources(root, shape, {k: states[k] for k in ["base", *experts]})
    recipe = recipe_for("ties", (0.6, 0.4, 0.3, 0.2)[: len(experts)], tuple(str(folders[k]) for k in experts),
                        base=str(folders["base"]))
    recipe_path = root / "recipe.yaml"
    recipe_path.write_text(recipe.to_yaml(), encoding="utf-8")
    out = root / "merged"
    seconds, peak, _ = run_cli(recipe_path, out, device)
    floor = io_floor([folders[k] for k in ["base", *experts]], root / "floor.safetensors")
    fewer = "" if len(experts) == made else f" (base + {len(experts)} of {made} experts: disk too small for more)"
    return [Row("folder", f"python -m merging run --device {device}: ties to a folder{fewer}", seconds, peak,
                f"{seconds / floor:.1f}x the I/O floor (the CLI's start included)"),
            Row("folder", "I/O floor: read the sources, write one model (safetensors alone)", floor, None,
                "warm page cache, as the merge had")], out


# --- bitsandbytes -------------------------------------------------------------------------------------------------

def quantized_chat(folder: Path | None, device: str) -> list[Row]:
    """8-bit and 4-bit loading of a merged folder and one chat reply (cuda only)."""
    if not device.startswith("cuda"):
        return [Row(q, f"{q} (bitsandbytes) load + chat", None, None,
                    "skipped: bitsandbytes loading needs a CUDA GPU (inference.loading refuses it on the CPU)")
                for q in ("8bit", "4bit")]
    if folder is None:
        return [Row(q, f"{q} load + chat", None, None, "skipped: no merged folder") for q in ("8bit", "4bit")]
    from inference.generation import generate_batch
    from inference.loading import load_model

    rows = []
    for quantization in ("8bit", "4bit"):
        torch.cuda.empty_cache()
        reset_peak(device)
        tick = time.perf_counter()
        loaded = load_model(folder, device=device, quantization=quantization)
        load_s = time.perf_counter() - tick
        chat_s = timed(device, lambda got=loaded: generate_batch(got.model, got.tokenizer, ["Q: 2 + 3 = ?"], 32))
        rows.append(Row(quantization, f"{quantization} (bitsandbytes) load + a 32-token reply of {folder.name}",
                        load_s + chat_s, peak_gb(device), f"load {load_s:.1f} s, reply {chat_s:.2f} s"))
        del loaded
    return rows


def small_merged_folder(root: Path, device: str) -> Path:
    """A 1B-shaped merged folder for the bitsandbytes rows when the main shape is larger."""
    from merging.engine import merge_to_folder

    model, base, experts = make_family("1b", device, seed=3)
    del model
    folders = write_sources(root / "small", "1b", {"base": base, "expert_a": experts["expert_a"]})
    del base, experts
    recipe = recipe_for("task_arithmetic", (0.7,), (str(folders["expert_a"]),), base=str(folders["base"]))
    return merge_to_folder(recipe, root / "small" / "merged", device=device).out_dir


# --- the report ---------------------------------------------------------------------------------------------------

def table(rows: list[Row]) -> str:
    lines = ["| step | what | seconds | peak memory GB | note |", "|---|---|---|---|---|"]
    for row in rows:
        seconds = "—" if row.seconds is None else f"{row.seconds:.2f}"
        peak = "—" if row.peak_gb is None else f"{row.peak_gb:.1f}"
        lines.append(f"| {row.step} | {row.what} | {seconds} | {peak} | {row.note} |")
    return "\n".join(lines)


def device_name(device: str) -> str:
    from bench.machine import machine

    gpu = f"{torch.cuda.get_device_name(device)}, " if device.startswith("cuda") else ""
    return gpu + machine()


def guarded(rows: list[Row], step: str, work: Callable[[], list[Row] | Row]) -> bool:
    """Run one step; a failure becomes a FAILED row (the other steps still run, so one GPU run finds them all)."""
    try:
        got = work()
    except Exception as error:  # noqa: BLE001 - reported in the table, the exit status says it failed
        rows.append(Row(step, "FAILED", None, None, f"{type(error).__name__}: {str(error)[:300]}"))
        print(f"{step}: FAILED: {error!r}", flush=True)
        return False
    for row in got if isinstance(got, list) else [got]:
        rows.append(row)
        print(f"{row.step}: {row.what}: {row.seconds if row.seconds is None else round(row.seconds, 3)} s "
              f"{row.note}", flush=True)
    return True


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (cuda:N) or cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--points", type=int, default=5, help="sweep points")
    parser.add_argument("--experts", type=int, choices=(1, 2, 3, 4), default=2,
                        help="experts beside the base (3 on an 80 GB GPU: the plan streams what does not fit)")
    parser.add_argument("--prompts", type=int, help="prompts scored (cuda: 256)")
    parser.add_argument("--new-tokens", type=int, help="new tokens per prompt (cuda: 256)")
    parser.add_argument("--batch", type=int, help="prompts per batch (cuda: 64)")
    parser.add_argument("--repeats", type=int, help="re-merges per method (cuda: 5)")
    parser.add_argument("--workdir", type=Path, help="folder for the on-disk sources (default: a temporary one)")
    parser.add_argument("--skip-folder", action="store_true", help="no folder merge (and no disk use)")
    parser.add_argument("--skip-static", action="store_true",
                        help="no static-cache generate row (on cuda its compile can take minutes)")
    return parser.parse_args()


def main() -> int:
    args = arguments()
    device = args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA GPU usable by torch; use --device cpu for the rehearsal")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    count, new_tokens, batch, repeats, sweep_count, sweep_tokens = WORKLOADS[(kind, args.shape)]
    count, new_tokens = args.prompts or count, args.new_tokens or new_tokens
    batch, repeats = args.batch or batch, args.repeats or repeats
    started = time.perf_counter()
    from inference.loading import load_tokenizer
    from merging.live import LiveMerger, plan_for_states
    from merging.plan import available_bytes

    rows: list[Row] = []
    tokenizer = load_tokenizer(TOKENIZER)
    free = {"device": available_bytes(device), "host": available_bytes("cpu")}  # before the family takes its share
    reset_peak(device)
    model, base, experts = make_family(args.shape, device, experts=args.experts)
    params = sum(t.numel() for t in base.values())
    rows.append(Row("make", f"Mistral-{args.shape}-shaped base + {args.experts} experts on {device} ({params / 1e6:,.0f} M "
                    "parameters each, bf16)", time.perf_counter() - started, peak_gb(device)))
    plan = plan_for_states([base, *experts.values()], device=device, available=free["device"],
                           host_available=free["host"])
    rows.append(Row("plan", f"live memory plan: {'on' if plan.live else 'OFF'}", None, None, plan.reason))
    print(plan.reason, flush=True)
    # The merger holds each source once (the same tensors: no copy on its own device); `held` is dropped before
    # the folder merge, so the CLI's process has the memory.
    held = {"model": model, "merger": LiveMerger(base, experts, model.config.num_hidden_layers, device=device,
                                                 on_device=plan.on_device if plan.live else None)}
    del base, experts, model
    guarded(rows, "live", lambda: live_remerge(held["merger"], held["model"], device, repeats))
    guarded(rows, "score", lambda: score(held["model"], tokenizer, device, count, new_tokens, batch))
    if not args.skip_static:
        guarded(rows, "score", lambda: score_static(held["model"], tokenizer, device, min(count, batch), new_tokens,
                                                    batch))
    guarded(rows, "sweep", lambda: sweep(held["merger"], held["model"], tokenizer, device, args.points, sweep_count,
                                         sweep_tokens, batch))
    states = {"base": held["merger"].base, **held["merger"].models}
    held.clear()  # only the sources stay, for the folder merge
    on_disk(rows, args, device, states)
    total = time.perf_counter() - started
    print(f"\nMachine: {device_name(device)}; shape {args.shape}; {total:.0f} s in all.\n")
    print(table(rows))
    print("\nRows for docs/benchmarks.md (" + time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
          + f", {device_name(device)}, load average {os.getloadavg()[0]:.1f}, "
          + f"`bench/gpu_check.py --device {device} --shape {args.shape} --points {args.points}`):\n")
    print("\n".join(table(rows).splitlines()[2:]))
    print(json.dumps({"failed": [r.step for r in rows if r.what == "FAILED"], "seconds": round(total, 1)}))
    return 1 if any(r.what == "FAILED" for r in rows) else 0


def on_disk(rows: list[Row], args: argparse.Namespace, device: str, states: dict) -> None:
    """The steps with folders: the folder merge of the sources (`states` is emptied after it, freeing them), then
    the bitsandbytes rows on a merged folder (a 1B-shaped one made for them where the main shape is larger)."""
    root = Path(args.workdir or tempfile.mkdtemp(prefix="mergelab-gpu-check-"))
    root.mkdir(parents=True, exist_ok=True)
    merged: list[Path | None] = [None]
    try:
        if not args.skip_folder:
            guarded(rows, "folder", lambda: _folder_rows(root, args.shape, device, states, merged))
        states.clear()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            if args.shape == "7b" or merged[0] is None:
                guarded(rows, "small", lambda: _small(root, device, merged))
        guarded(rows, "quantized", lambda: quantized_chat(merged[0], device))
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


def _folder_rows(root: Path, shape: str, device: str, states: dict, merged: list) -> list[Row]:
    rows, out = folder_merge(root, shape, device, states)
    merged[0] = out
    return rows


def _small(root: Path, device: str, merged: list) -> list[Row]:
    tick = time.perf_counter()
    merged[0] = small_merged_folder(root, device)
    return [Row("small", "a 1B-shaped merged folder for the 8/4-bit rows (made, written, merged)",
                time.perf_counter() - tick, None)]


if __name__ == "__main__":
    raise SystemExit(main())
