"""One server, driven as visitors drive it (gradio_client), on the SmolLM2 family (issue 18):

1. one session re-merges and chats `--rounds` times (weights changing every round); the server's resident memory
   (VmRSS of its process) is read after each round: after `--warmup` rounds it must stay within 10 % of its
   post-warm-up level (no growth per merge);
2. four sessions at once, each with its own weights, merge and chat; each answer must equal the answer of the same
   merge made alone (a fifth session afterwards, one weight set at a time).

    flock /tmp/mergelab-heavy.lock timeout 900 .venv/bin/python bench/bench_session_memory.py --rounds 50

Prints the memory curve and the comparison, and writes them as JSON (--out). Figures go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import machine

MERGE_TAG = re.compile(r"\n\n— \*merge #\d+\*$")
CONCURRENT_WEIGHTS = [(1.0, 0.0), (0.0, 1.0), (0.7, 0.7), (0.3, 1.2)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=5).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(1)
    server.kill()
    raise SystemExit("the server did not come up in 10 minutes")


def rss_mb(pid: int) -> float:
    """Resident memory of the process, MB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def client(url: str, family: str):
    from gradio_client import Client

    c = Client(url, verbose=False, httpx_kwargs={"timeout": 900})
    report = c.predict("Zoo", family, ["math", "japanese"], "", "", None, api_name="/preflight")
    if "ready to merge" not in report:
        raise SystemExit(report)
    return c


def merge_and_chat(c, weights, prompt: str, tokens: int) -> tuple[str, float, float]:
    """(answer without its merge tag, merge seconds, chat seconds)."""
    settings = {"method": "task_arithmetic", "weights": list(weights), "params": {}, "seed": 0}
    started = time.perf_counter()
    c.predict(settings, api_name="/merge")
    merged_s = time.perf_counter() - started
    merged, *_ = c.predict(prompt, [], [], "(none)", tokens, 0.0, 1.0, "none", api_name="/chat")
    content = merged[-1]["content"]
    text = content if isinstance(content, str) else "".join(b.get("text", "") for b in content)
    return MERGE_TAG.sub("", text), merged_s, time.perf_counter() - started - merged_s


def memory_curve(url: str, pid: int, args: argparse.Namespace) -> dict:
    c = client(url, args.family)
    rounds = []
    for i in range(args.rounds):
        weights = (round(0.2 + 0.8 * (i % 7) / 6, 3), round(1.0 - 0.6 * (i % 5) / 4, 3))
        _, merge_s, chat_s = merge_and_chat(c, weights, args.prompt, args.tokens)
        rounds.append({"round": i + 1, "weights": weights, "rss_mb": round(rss_mb(pid), 1),
                       "merge_s": round(merge_s, 2), "chat_s": round(chat_s, 2)})
        print(f"round {i + 1:3d}  weights {weights}  server {rounds[-1]['rss_mb']:8.1f} MB  merge "
              f"{merge_s:5.2f} s  chat {chat_s:5.2f} s", flush=True)
    after = [r["rss_mb"] for r in rounds[args.warmup:]]
    reference = after[0]
    spread = (max(after) - reference) / reference
    return {"rounds": rounds, "reference_mb": reference, "max_mb": max(after), "min_mb": min(after),
            "growth_after_warmup": round(spread, 4), "within_10_percent": max(after) <= 1.1 * reference}


def concurrent_sessions(url: str, args: argparse.Namespace) -> dict:
    def one(weights):
        return merge_and_chat(client(url, args.family), weights, args.prompt, args.tokens)[0]

    with ThreadPoolExecutor(len(CONCURRENT_WEIGHTS)) as pool:
        together = list(pool.map(one, CONCURRENT_WEIGHTS))
    alone_client = client(url, args.family)
    alone = [merge_and_chat(alone_client, w, args.prompt, args.tokens)[0] for w in CONCURRENT_WEIGHTS]
    rows = [{"weights": w, "together": t, "alone": a, "same": t == a}
            for w, t, a in zip(CONCURRENT_WEIGHTS, together, alone, strict=True)]
    for row in rows:
        print(f"weights {row['weights']}: {'same' if row['same'] else 'DIFFERENT'}  {row['together']!r}")
    return {"sessions": rows, "all_same": all(r["same"] for r in rows),
            "distinct_answers": len({r["alone"] for r in rows})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="smollm2")
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--prompt", default="十七+四=")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_session_memory.json"))
    args = parser.parse_args()
    port = free_port()
    server = start_server(port)
    url = f"http://127.0.0.1:{port}/"
    try:
        started = time.perf_counter()
        curve = memory_curve(url, server.pid, args)
        print(f"after warm-up: {curve['reference_mb']:.0f} MB, max {curve['max_mb']:.0f} MB, min "
              f"{curve['min_mb']:.0f} MB: growth {curve['growth_after_warmup']:.1%} "
              f"({'within' if curve['within_10_percent'] else 'OVER'} 10 %)")
        sessions = concurrent_sessions(url, args)
        print(f"4 concurrent sessions: {'each answer is its own merge' if sessions['all_same'] else 'MIXED UP'} "
              f"({sessions['distinct_answers']} distinct answers)")
        result = {"machine": machine(), "load": os.getloadavg(), "family": args.family, "memory": curve,
                  "concurrent": sessions, "seconds": round(time.perf_counter() - started, 1)}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
        print(f"wrote {args.out}")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
