"""Chat at the speed of the model: tokens per second of a greedy answer, side by side in one run on the same merged
weights (the default preset's models, task arithmetic at weight 0.01 each: a merge that still writes long answers
like the base, where the experts' merges answer "答え: N" in four tokens and time only the prompt):

- `generate`: plain `model.generate` (the ceiling),
- `stream_chat`: inference.generation.stream_chat, as the Chat tab calls it (greedy: its own KV-cache loop in the
  caller's thread), consumed in-process,
- `stream_chat (thread)`: the same reply through transformers' generate on a thread feeding a TextIteratorStreamer
  (the path before issue 20, still used for sampling; reached here with repetition_penalty 1.0, a no-op),
- `/chat`: the page's /chat event through gradio_client against a server in this process (the merged pane alone,
  no source beside it), timed from submit to the last streamed message.

Rounds alternate the three so load changes hit each alike; the median of the rounds is reported. Never run in CI:
run it under the heavy-job lock.

    .venv/bin/python bench/bench_chat.py [--tokens 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch
from machine import machine  # bench/machine.py (this folder is on sys.path when a script runs)

PROMPT = "Write a long story about a cat who travels around the world, with many details."
SETTINGS = {"method": "task_arithmetic", "weights": [0.01, 0.01], "params": {}, "seed": 0}


def local_session(config):
    """The default preset's models merged with SETTINGS, in-process through the page's own handlers."""
    from ui import merge_panel, models_panel
    from ui.session import new_session

    session = new_session()
    name = models_panel.default_preset_name()
    models_panel.check_models(session, config, models_panel.preset_choice(models_panel.get_preset(name)), name)
    merge_panel.run_merge(session, config, SETTINGS)
    return session


def time_generate(model, tokenizer, tokens: int) -> tuple[int, float]:
    text = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                         add_generation_prompt=True)
    encoded = tokenizer(text, return_tensors="pt")
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**encoded, max_new_tokens=tokens, do_sample=False)
    return out.shape[1] - encoded["input_ids"].shape[1], time.perf_counter() - started


def time_stream_chat(model, tokenizer, tokens: int, threaded: bool = False) -> tuple[int, float]:
    from inference.generation import stream_chat

    extra = {"repetition_penalty": 1.0} if threaded else {}
    started, reply = time.perf_counter(), ""
    for reply in stream_chat(model, tokenizer, [{"role": "user", "content": PROMPT}], max_new_tokens=tokens,
                             temperature=0.0, **extra):
        pass
    return len(tokenizer(reply, add_special_tokens=False)["input_ids"]), time.perf_counter() - started


def time_page_chat(client, tokenizer, tokens: int) -> tuple[int, float, int]:
    from ui.chat_panel import NO_COMPARISON, untagged

    started = time.perf_counter()
    job = client.submit(PROMPT, [], [], NO_COMPARISON, tokens, 0.0, 1.0, "none", api_name="/chat")
    merged = job.result()[0]
    seconds = time.perf_counter() - started
    reply = untagged(merged)[-1]["content"]
    reply = reply if isinstance(reply, str) else "".join(b.get("text", "") for b in reply)
    # Re-tokenizing the decoded reply can count more tokens than were generated (136 for 128): never above the limit.
    return min(tokens, len(tokenizer(reply, add_special_tokens=False)["input_ids"])), seconds, len(job.outputs())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from gradio_client import Client

    from app import create_app
    from ui import models_panel
    from ui.hosting import HostConfig

    config = HostConfig.detect(hosted=False, models_dir=Path(tempfile.mkdtemp(prefix="bench-chat-")))
    session = local_session(config)
    model, tokenizer = session.chat_model.model, session.chat_model.tokenizer
    demo = create_app(config)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    client = Client(url, verbose=False)
    name = models_panel.default_preset_name()
    choice = models_panel.preset_choice(models_panel.get_preset(name))
    client.predict(choice.origin, choice.family, choice.experts, choice.base, choice.sources, name,
                   api_name="/preflight")
    client.predict(SETTINGS, api_name="/merge")  # the same settings, so the same weights
    rates: dict[str, list[float]] = {"generate": [], "stream_chat": [], "stream_chat (thread)": [], "/chat": []}
    print(f"# {machine()}; {time.strftime('%Y-%m-%d %H:%M')}; torch threads {torch.get_num_threads()}; "
          f"{args.tokens} greedy tokens at most")
    time_generate(model, tokenizer, 8)  # warm-up
    for round_ in range(args.rounds):
        n, s = time_generate(model, tokenizer, args.tokens)
        rates["generate"].append(n / s)
        n2, s2 = time_stream_chat(model, tokenizer, args.tokens)
        rates["stream_chat"].append(n2 / s2)
        n4, s4 = time_stream_chat(model, tokenizer, args.tokens, threaded=True)
        rates["stream_chat (thread)"].append(n4 / s4)
        n3, s3, messages = time_page_chat(client, tokenizer, args.tokens)
        rates["/chat"].append(n3 / s3)
        print(f"round {round_ + 1}: generate {n} tokens {n / s:.1f}/s · stream_chat {n2} tokens {n2 / s2:.1f}/s · "
              f"thread {n4} tokens {n4 / s4:.1f}/s · /chat {n3} tokens {n3 / s3:.1f}/s in {messages} streamed "
              "messages", flush=True)
    ceiling = statistics.median(rates["generate"])
    for key, values in rates.items():
        median = statistics.median(values)
        print(f"| {key} | {median:.1f} tokens/s | {median / ceiling:.2f}× |")
    demo.close()


if __name__ == "__main__":
    main()
