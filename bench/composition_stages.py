"""Which stage of the tiny LM zoo's composite fails on a build seed? For one bench/composition.py run folder (base,
math, japanese and strings experts of one design and seed), on the 60 held-out japanese_math prompts:

- the two stages: does a model or merge rewrite `七十-六=` as `70-6=` before `答え:` (rewrite), and does its answer
  follow from what it restated (computes), besides being right; the compute stage alone on the same problems
  written in digits (`70-6=`);
- how fragile the math stage is: the math expert plus the japanese vector at a few weights, and plus a random
  direction with the japanese vector's norm in every tensor, answering the problems in digits;
- the task vectors' norms (in all, per tensor group, per layer) and cosines.

    python bench/composition_stages.py /tmp/comp/replay-rewrite-math600-jnoarith-1 [more run folders]

Numbers for docs/zoo.md, "Why seed 1 fails". Single-threaded; about a minute a folder.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch
from transformers import MistralForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inference.generation import generate_batch
from zoo import lm
from zoo.lm_tasks import _fact_of, lm_splits

EXPERTS = ("math", "japanese", "strings")
RESTATED = re.compile(r"^(\d+)([+-])(\d+)=?$")
GROUPS = {"embeddings": "embed_tokens", "attention": "self_attn", "mlp": ".mlp.", "layer 0": "layers.0.",
          "layer 1": "layers.1.", "layer 2": "layers.2.", "head": "lm_head"}
MERGES = ({"math": 1.0, "japanese": 0.5}, {"math": 1.0, "japanese": 0.4, "strings": 0.7})
State = dict[str, torch.Tensor]


def _value(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def stage_rates(outputs: list[str], facts: list[tuple[int, str, int]]) -> dict[str, float]:
    """Shares of replies that restate the problem in digits exactly, whose answer is the value of what they
    restated (among those that restated a problem in digits), and whose answer is right."""
    exact = parsed = follows = right = 0
    for output, (a, op, b) in zip(outputs, facts):
        head, _, reply = output.rpartition("答え:")
        head, reply = head.strip(), reply.strip()
        exact += head == f"{a}{op}{b}="
        restated = RESTATED.match(head)
        if restated:
            parsed += 1
            follows += reply == str(_value(int(restated[1]), restated[2], int(restated[3])))
        right += reply == str(_value(a, op, b))
    n = len(facts)
    return {"rewrite": exact / n, "computes": follows / max(parsed, 1), "right": right / n}


def task_vectors(states: dict[str, State]) -> dict[str, State]:
    return {e: {k: states[e][k] - states["base"][k] for k in states["base"]} for e in EXPERTS}


def merged(states: dict[str, State], vectors: dict[str, State], weights: dict[str, float]) -> State:
    return {k: states["base"][k] + sum(w * vectors[e][k] for e, w in weights.items()) for k in states["base"]}


def with_random_direction(start: State, like: State, scale: float, seed: int) -> State:
    """`start` plus a random direction with `like`'s norm in every tensor, times `scale`."""
    generator = torch.Generator().manual_seed(seed)
    moved = {}
    for k, v in like.items():
        direction = torch.randn(v.shape, generator=generator)
        moved[k] = start[k] + scale * direction * (v.norm() / direction.norm())
    return moved


def norms(vectors: dict[str, State]) -> list[str]:
    """Each task vector's norm in all and per tensor group, and the pairwise cosines."""
    flat = {e: torch.cat([t.flatten() for t in v.values()]) for e, v in vectors.items()}
    lines = []
    for e, v in vectors.items():
        groups = ", ".join(f"{g} {torch.cat([t.flatten() for k, t in v.items() if part in k]).norm():.2f}"
                           for g, part in GROUPS.items())
        lines.append(f"  |{e}| = {flat[e].norm():.2f} ({groups})")
    cosine = torch.nn.functional.cosine_similarity
    lines.append("  cosines: " + ", ".join(f"{a}/{b} {cosine(flat[a], flat[b], dim=0):.3f}"
                                         for a, b in (("math", "japanese"), ("math", "strings"),
                                                      ("japanese", "strings"))))
    return lines


def diagnose(folder: Path) -> list[str]:
    """The report of one run folder: stages, the math stage's fragility, norms."""
    tokenizer = lm.build_tokenizer()
    prompts = [e.prompt for e in lm_splits()["japanese_math"].evaluation]
    facts = [_fact_of(p) for p in prompts]
    digits = [f"{a}{op}{b}=" for a, op, b in facts]
    models = {n: MistralForCausalLM.from_pretrained(folder / n).eval() for n in ("base", *EXPERTS)}
    states = {n: m.state_dict() for n, m in models.items()}
    vectors = task_vectors(states)
    probe = MistralForCausalLM(models["base"].config).eval()

    def rates(state: State, inputs: list[str]) -> dict[str, float]:
        probe.load_state_dict(state)
        return stage_rates(generate_batch(probe, tokenizer, inputs, 16), facts)

    def line(label: str, state: State) -> str:
        kanji, plain = rates(state, prompts), rates(state, digits)
        return (f"  {label}: kanji rewrite {kanji['rewrite']:.0%}, computes {kanji['computes']:.0%}, right "
                f"{kanji['right']:.0%}; in digits right {plain['right']:.0%}")

    lines = [f"== {folder.name}"] + [line(n, states[n]) for n in ("base", *EXPERTS)]
    lines += [line("TA " + " / ".join(f"{e} {w}" for e, w in weights.items()), merged(states, vectors, weights))
              for weights in MERGES]
    fragility = [f"japanese {w}: {rates(merged(states, vectors, {'math': 1.0, 'japanese': w}), digits)['right']:.0%}"
                 for w in (0.2, 0.3, 0.5)]
    fragility += [f"random x{s} (draw {d}): "
                  f"{rates(with_random_direction(states['math'], vectors['japanese'], s, d), digits)['right']:.0%}"
                  for s in (0.5, 1.0) for d in (0, 1)]
    lines.append("  math expert + " + "; ".join(fragility) + " (right, problems in digits)")
    parts = [f"{g} {rates(merged(states, only(vectors, part), {'math': 1.0, 'japanese': 0.5}), digits)['right']:.0%}"
             for g, part in GROUPS.items()]
    lines.append("  math 1.0 + japanese 0.5 on one part only: " + ", ".join(parts) + " (right, problems in digits)")
    plain = [f"{a}{op}{b}" for a, op, b in facts]  # the base's own form: a restated sum without `=`
    base = [f"x{s}: {rates(with_random_direction(states['base'], vectors['japanese'], s, 0), plain)['right']:.0%}"
            for s in (0.0, 1.0, 1.5)]
    lines.append("  base + random direction " + ", ".join(base) + " (right, problems without =)")
    return lines + norms(vectors)


def only(vectors: dict[str, State], part: str) -> dict[str, State]:
    """The math vector whole and the japanese vector on the tensors whose names contain `part` only."""
    japanese = {k: v if part in k else torch.zeros_like(v) for k, v in vectors["japanese"].items()}
    return {**vectors, "japanese": japanese}


def main() -> None:
    torch.set_num_threads(1)
    for folder in sys.argv[1:]:
        print("\n".join(diagnose(Path(folder))), flush=True)


if __name__ == "__main__":
    main()
