"""Fine-tunes the SmolLM2 family's experts as LoRA adapters: `python -m zoo train smollm2` (minutes of CPU each).

Deterministic: the examples, the adapter's initialisation and the batch order come from seeds derived from the expert's
name, and training runs on the CPU in float32. Not run at app start: the adapters it writes ship in
assets/zoo/smollm2/<expert>/ (adapter_model.safetensors + adapter_config.json, each a few MB), and the family build
only materialises base + adapter delta. The loss covers the reply tokens only (and the end-of-turn token), on exactly
the chat-formatted input inference feeds the model.

Each expert adapts its own layers (EXPERT_SETTINGS, design I of docs/zoo.md): the japanese expert layers 0-9 (reading
numerals happens early), the math expert layers 10-29 with more capacity (rank 16 on every linear module), the
strings expert layers 18-29. The two task vectors that compose touch no common matrix.
"""

from __future__ import annotations

import json
import random
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from evaluation.answers import expected_answer, extract
from evaluation.tasks import tasks_from_records

from .scoring import greedy_answers
from .smollm2_tasks import GENERAL_HELD_OUT, GENERAL_PROMPTS, test_split, train_examples

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "zoo" / "smollm2"


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "v_proj", "up_proj", "down_proj")
    # The upper 12 of the 30 layers only: backpropagation then stops at layer 18, which more than halves a step's
    # cost on the CPU (a step of 8 examples took 12-56 s through all layers on 2 busy cores).
    layers: tuple[int, ...] = tuple(range(18, 30))
    learning_rate: float = 2e-3
    batch_size: int = 6
    steps: int = 90
    examples: int = 2000
    seed: int = 0
    # Share of each batch given to replay: the base's own replies to everyday prompts, so the expert learns its
    # skill without forgetting how to chat (without it every merge answered "答え: N" to "What is the capital…").
    replay_share: float = 1 / 3
    replay_tokens: int = 40


ALL_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Per expert (docs/zoo.md, "Composition designs tried", design I): steps where each skill is learned on the
# validation split; alpha is twice the rank throughout.
EXPERT_SETTINGS = {
    "math": LoraSettings(rank=16, alpha=32, target_modules=ALL_MODULES, layers=tuple(range(10, 30)), steps=240),
    "japanese": LoraSettings(layers=tuple(range(10)), steps=170),
    "strings": LoraSettings(steps=50),
}


def expert_seed(seed: int, expert: str) -> int:
    return zlib.crc32(f"{seed}:smollm2:{expert}".encode())


def encode(tokenizer, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """Input ids of the chat-formatted prompt + answer + end of turn, and labels (-100 on the prompt)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def _batch(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Left-padded inputs and the labels of the last `keep` positions only: the answers sit at the end, so the
    vocabulary projection (a fifth of the model's compute at this length) runs on those positions alone."""
    width = max(len(ids) for ids, _ in pairs)
    keep = max(sum(1 for x in lab if x != -100) for _, lab in pairs) + 1
    ids = torch.full((len(pairs), width), pad_id)
    labels = torch.full((len(pairs), width), -100)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for row, (i, lab) in enumerate(pairs):
        ids[row, width - len(i):], labels[row, width - len(lab):] = torch.tensor(i), torch.tensor(lab)
        mask[row, width - len(i):] = 1
    return {"input_ids": ids, "attention_mask": mask, "logits_to_keep": keep}, labels[:, -keep:]


def answer_loss(model, inputs: dict, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the answer tokens (logits at position t predict the token at t + 1)."""
    logits = model(**inputs).logits.float()
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                             labels[:, 1:].reshape(-1), ignore_index=-100)


@torch.no_grad()
def held_out_accuracy(model, tokenizer, task: str, seed: int = 0) -> float:
    """Share of the task's test prompts whose greedy answer equals the expected one, read as the Evaluate tab reads
    it (the task's answer type and generation limit)."""
    spec = tasks_from_records([r for r in test_split(seed) if r["task"] == task], "smollm2 test split").tasks[task]
    outputs = greedy_answers(model, tokenizer, spec.inputs, max_new_tokens=spec.max_new_tokens or 16)
    hits = sum(extract(text, spec.answer_type) == expected_answer(answer, spec.answer_type)
               for text, answer in zip(outputs, spec.answers))
    return hits / len(outputs)


def replay_examples(model, tokenizer, max_new_tokens: int) -> list[tuple[str, str]]:
    """(prompt, the base's own greedy reply) for the everyday prompts; computed before the adapter exists."""
    replies = greedy_answers(model, tokenizer, list(GENERAL_PROMPTS), max_new_tokens=max_new_tokens, batch_size=8)
    return [(p, r.strip()) for p, r in zip(GENERAL_PROMPTS, replies) if r.strip()]


def train_expert(base_dir: Path, expert: str, out: Path, settings: LoraSettings, log=print) -> dict:
    """Trains one LoRA adapter on the expert's examples and saves it to `out`; returns a record of the run."""
    seed = expert_seed(settings.seed, expert)
    torch.manual_seed(seed)
    with _one_thread():
        tokenizer = AutoTokenizer.from_pretrained(base_dir)
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        replay = [encode(tokenizer, p, a) for p, a in replay_examples(model, tokenizer, settings.replay_tokens)]
        model = _with_lora(model, settings)
        data = [encode(tokenizer, p, a) for p, a in train_examples(expert, settings.examples, settings.seed)]
        losses, seconds = _train_steps(model, expert, data, replay, tokenizer.pad_token_id, settings,
                                       random.Random(seed), log)
        model.eval()
        round_lora_to_half(model)  # measured as stored
        accuracy = held_out_accuracy(model, tokenizer, expert, settings.seed)
        log(f"{expert}: held-out accuracy {accuracy:.2f} after {settings.steps} steps in {seconds:.0f} s")
        chat = dict(zip(GENERAL_HELD_OUT, greedy_answers(model, tokenizer, list(GENERAL_HELD_OUT), max_new_tokens=24)))
        log(f"{expert}: everyday prompts it never trained on: {chat}")
        record = {"expert": expert, "settings": asdict(settings), "seconds": round(seconds, 1),
                  "everyday_replies": chat, "final_loss": round(_recent_loss(losses), 4),
                  "held_out_accuracy": accuracy, "torch_threads": 1}
        _save_adapter(model, out, record)
    return record


@contextmanager
def _one_thread() -> Iterator[None]:
    """Train on one thread (restored after, also on failure): the same float sums on every machine, and on a shared
    2-core machine a second OpenMP thread mostly waits for the first."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _with_lora(model, settings: LoraSettings):
    """`model` wrapped by peft with fresh LoRA factors on the settings' modules and layers (the rest frozen)."""
    from peft import LoraConfig, get_peft_model  # deferred: peft is needed only to train (python -m zoo train)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=0.0, bias="none",
                        target_modules=list(settings.target_modules), layers_to_transform=list(settings.layers),
                        task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _train_steps(model, expert: str, data: list[tuple[list[int], list[int]]], replay: list[tuple[list[int], list[int]]],
                 pad_id: int, settings: LoraSettings, order: random.Random, log) -> tuple[list[float], float]:
    """AdamW on the trainable (LoRA) parameters: a 10-step warm-up, then a linear decay to a tenth; each batch mixes
    the expert's examples with a `replay_share` of replay. Returns (the loss of each step, seconds taken)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.learning_rate,
                                  weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 10) * max(0.1, 1 - step / settings.steps))
    model.train()
    started, losses = time.perf_counter(), []
    n_replay = round(settings.batch_size * settings.replay_share) if replay else 0
    for step in range(settings.steps):
        batch = order.sample(data, settings.batch_size - n_replay) + order.sample(replay, n_replay)
        loss = answer_loss(model, *_batch(batch, pad_id))
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 10 == 9 or step == settings.steps - 1:
            log(f"{expert} step {step + 1}/{settings.steps} loss {_recent_loss(losses):.4f} "
                f"({time.perf_counter() - started:.0f} s)")
    return losses, time.perf_counter() - started


def _recent_loss(losses: list[float]) -> float:
    """The mean loss of the last 10 steps."""
    return sum(losses[-10:]) / len(losses[-10:])


def round_lora_to_half(model) -> None:
    """The trainable (LoRA) factors rounded to the float16 values they are stored as (store_half), in place."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.copy_(parameter.half().float())


def store_half(adapter_dir: Path) -> None:
    """Rewrites the adapter's weights in float16. Half the bytes: the shipped families share a 20 MB budget in
    assets/zoo (the math expert's rank-16 adapter on 140 matrices is 13 MB in float32). float16 keeps 11 significant
    bits, so each factor moves by at most 2^-11 of itself; the materialised expert is base + delta computed from the
    stored factors, so what ships is what was measured."""
    path = Path(adapter_dir) / "adapter_model.safetensors"
    weights = load_file(str(path))
    save_file({name: tensor.half().contiguous() for name, tensor in weights.items()}, str(path),
              metadata={"format": "pt"})


def _save_adapter(model, out: Path, record: dict) -> None:
    """The adapter (adapter_model.safetensors in float16 + adapter_config.json) and the run's record (training.json)
    in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    store_half(out)
    for extra in ("README.md",):  # peft's generic card says nothing true about this adapter
        (out / extra).unlink(missing_ok=True)
    (out / "training.json").write_text(json.dumps({**record, "stored_dtype": "float16"}, indent=2) + "\n")


def train(base_dir: Path, out: Path | None = None, experts: tuple[str, ...] = ("math", "japanese", "strings"),
          log=print) -> list[dict]:
    """Trains every expert's adapter into `out/<expert>` (default: the shipped assets/zoo/smollm2)."""
    out = Path(out) if out else ASSETS
    return [train_expert(base_dir, e, out / e, EXPERT_SETTINGS[e], log) for e in experts]
