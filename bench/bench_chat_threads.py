"""Chat decoding with one or two intra-op threads, on an idle and on a busy machine: tokens per second of a greedy
/chat reply (inference.generation.stream_chat, as the Chat tab calls it) on the default preset's merge.

A shared host (a 2-core Space, or this machine with other jobs) runs other work beside a chat: OpenMP threads that
wait on each other at every small matmul of a 135M model can then cost far more than the second core gives. This
measures both settings side by side in one run: rounds alternate the thread counts, and the busy rows start
`--busy` processes that each spin one core (plain Python loops, no torch) for the duration of those rounds.

    .venv/bin/python bench/bench_chat_threads.py [--tokens 64] [--rounds 3] [--busy 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch
from bench_chat import local_session, time_stream_chat  # bench/ is on sys.path when a script runs
from machine import machine

SPIN = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def busy(count: int, seconds: float) -> list[subprocess.Popen]:
    """`count` processes spinning one core each for at most `seconds` (stopped earlier by the caller)."""
    return [subprocess.Popen([sys.executable, "-c", SPIN.format(seconds=seconds)]) for _ in range(count)]


def rate(model, tokenizer, tokens: int, threads: int) -> float:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generated, seconds = time_stream_chat(model, tokenizer, tokens)
    finally:
        torch.set_num_threads(before)
    return generated / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--busy", type=int, default=2, help="spinning processes in the busy rounds")
    args = parser.parse_args()
    from ui.hosting import HostConfig

    config = HostConfig.detect(hosted=False, models_dir=Path(tempfile.mkdtemp(prefix="bench-chat-threads-")))
    session = local_session(config)
    model, tokenizer = session.chat_model.model, session.chat_model.tokenizer
    rate(model, tokenizer, 8, 1)  # warm-up
    results: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for load in ("idle", "busy"):
            spinners = busy(args.busy, 600) if load == "busy" else []
            try:
                time.sleep(0.5 if spinners else 0)
                for threads in (1, 2):
                    results.setdefault((load, threads), []).append(rate(model, tokenizer, args.tokens, threads))
            finally:
                for process in spinners:
                    process.kill()
                    process.wait()
    print(machine())
    print(f"{args.tokens} tokens, median of {args.rounds} rounds; busy: {args.busy} spinning processes")
    print("| machine | 1 thread, tokens/s | 2 threads, tokens/s | 1 thread / 2 threads |")
    print("|---|---|---|---|")
    for load in ("idle", "busy"):
        one, two = (statistics.median(results[(load, t)]) for t in (1, 2))
        print(f"| {load} | {one:.1f} | {two:.1f} | {one / two:.2f}x |")


if __name__ == "__main__":
    main()
