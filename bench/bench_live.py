"""Live re-merge of the LM zoo after a slider move: what the app does when a weight or density slider moves (build the
recipe, LiveMerger.merge from cached task vectors, copy the result into the session's chat model), timed per move;
and the same move end to end through the running app's /merge endpoint (queue + HTTP) with gradio_client.

    .venv/bin/python bench/bench_live.py [--moves 30] [--record]

--record replaces the "## Live re-merge" section of docs/benchmarks.md with the figures.
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


def moves(n: int) -> list[list[float]]:
    """Slider positions a user might pass through: one weight changes per move."""
    weights, out = [0.5, 0.5, 0.5], []
    for i in range(n):
        weights = list(weights)
        weights[i % 3] = round(0.1 + (i * 0.137) % 1.0, 2)
        out.append(weights)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench_handlers(n: int) -> dict[str, list[float]]:
    from ui import models_panel
    from ui.hosting import HostConfig
    from ui.session import new_session
    from ui.workspace import MergeSettings, merge_live

    config = HostConfig.detect(hosted=False, models_dir=Path(tempfile.mkdtemp(prefix="bench-live-")))
    session = new_session()
    started = time.perf_counter()
    models_panel.check_models(session, config, models_panel.ModelsChoice("Zoo", "lm", EXPERTS, "", ""))
    print(f"choose models + pre-flight + cache task vectors: {time.perf_counter() - started:.2f} s")
    merge_live(session, MergeSettings("task_arithmetic", [0.5] * 3))  # first merge makes the session's chat model
    timings: dict[str, list[float]] = {}
    for method, params in METHODS.items():
        times = []
        for weights in moves(n):
            tick = time.perf_counter()
            merge_live(session, MergeSettings(method, weights, dict(params)))
            times.append((time.perf_counter() - tick) * 1000)
        timings[method] = times
    return timings


def bench_api(n: int) -> list[float]:
    from gradio_client import Client

    from app import create_app
    from ui.hosting import HostConfig

    demo = create_app(HostConfig.detect(hosted=False, models_dir=Path(tempfile.mkdtemp(prefix="bench-live-"))))
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(url, verbose=False)
        client.predict("Zoo", "lm", EXPERTS, "", "", None, api_name="/preflight")
        client.predict({"method": "ties", "weights": [0.5] * 3, "params": {"density": 0.5}}, api_name="/merge")
        times = []
        for weights in moves(n):
            tick = time.perf_counter()
            client.predict({"method": "ties", "weights": weights, "params": {"density": 0.5}}, api_name="/merge")
            times.append((time.perf_counter() - tick) * 1000)
        return times
    finally:
        demo.close()


def tensor_count() -> tuple[int, int]:
    from merging.sources import open_model
    from zoo import families

    with open_model(families()["lm"].base) as source:
        names = source.tensor_names()
        return len(names), sum(source.nbytes(n) for n in names) // 4


def report(handlers: dict[str, list[float]], api: list[float], imports_s: float, load: tuple[float, float]) -> str:
    import torch

    tensors, params = tensor_count()
    rows = ["| path | method | moves | median ms | p90 ms | max ms |", "|---|---|---|---|---|---|"]
    for method, times in handlers.items():
        rows.append(f"| handler (merge + load into chat model) | {method} | {len(times)} | "
                    f"{statistics.median(times):.0f} | {percentile(times, 0.9):.0f} | {max(times):.0f} |")
    rows.append(f"| gradio_client → /merge (queue + HTTP + the above) | ties | {len(api)} | "
                f"{statistics.median(api):.0f} | {percentile(api, 0.9):.0f} | {max(api):.0f} |")
    worst = max(statistics.median(t) for t in handlers.values())
    verdict = "under" if worst < TARGET_MS else "OVER"
    return "\n".join([
        "## Live re-merge",
        "",
        ("`bench/bench_live.py` times what happens when a weight or density slider moves in the app with the LM zoo "
         f"(base + {', '.join(EXPERTS)}: {tensors} tensors, {params / 1e6:.2f} M parameters each): the recipe is "
         "built from the controls, `LiveMerger.merge` mixes the cached task vectors, and the result is copied into "
         "the session's own chat model. Then the same move end to end through the running app's `/merge` endpoint."),
        "",
        (f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, Python "
         f"{platform.python_version()}; recorded {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
         f"Load average before / after: {load[0]:.1f} / {load[1]:.1f} (the cores are shared, so times are noisy)."),
        "",
        "Command: `.venv/bin/python bench/bench_live.py --record`",
        "",
        *rows,
        "",
        (f"Imports (torch, transformers, gradio): {imports_s:.1f} s, once per process. Slowest median "
         f"{worst:.0f} ms: **{verdict} the {TARGET_MS:.0f} ms target**."),
        "",
    ])


def record(section: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    pattern = re.compile(r"## Live re-merge\n.*?(?=\n## |\Z)", re.DOTALL)
    text = pattern.sub(section.rstrip() + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text, encoding="utf-8")
    print(f"recorded in {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moves", type=int, default=30)
    parser.add_argument("--record", action="store_true", help="write the section into docs/benchmarks.md")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    tick = time.perf_counter()
    import gradio  # noqa: F401
    import transformers  # noqa: F401

    import ui.page  # noqa: F401

    imports_s = time.perf_counter() - tick
    handlers = bench_handlers(args.moves)
    api = bench_api(args.moves)
    section = report(handlers, api, imports_s, (load_before, os.getloadavg()[0]))
    print(section)
    if args.record:
        record(section)


if __name__ == "__main__":
    main()
