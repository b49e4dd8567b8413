"""How long a learned merge takes, before it starts, and the defaults that fit a time budget.

A learning run costs (1) preparation: reading the models and, for SAMerging, each expert's greedy continuation of
every input (the teachers), then the search for the best constant start; and (2) steps: every step runs each task's
batch forward and backward through the merged model (twice for SAMerging's sharpness-aware step). Both grow with the
model's size and the number of inputs, so the estimate is  parameters × inputs × seconds-per-parameter-and-input,
with the seconds measured (docs/benchmarks.md, "Learned merging"):

- CPU, 2 shared cores: SmolLM2-135M, SAMerging with 2-3 experts, batches of 5-12 inputs a task: 10 s a step with
  2 × 6 inputs, 30 s with 3 × 12, 6-8 s with 2 × 5 on a quiet machine, i.e. 0.83 s per task input and step (6.2e-9
  s per parameter); preparation 95 s for 3 × 16 inputs and 48 s for 2 × 7 (2-3.4 s per input: 2.5e-8 s per
  parameter, the slower figure).
- GPU, one H100: GPT-2 size (124 M), 7 tasks × 16 inputs of 128 tokens: 0.62 s a SAMerging step, 5.5 ms per task
  input (4.4e-11 s per parameter).

These are rough (a busy machine is slower, a short prompt faster): the page shows the estimate before a run and a
live ETA from the steps actually timed.
"""

from __future__ import annotations

from dataclasses import dataclass

SECONDS_PER_PARAM_INPUT_STEP = {"cpu": 6.2e-9, "cuda": 4.4e-11}  # SAMerging; AdaMerging takes half (one pass)
# GPU preparation of an LM (the teachers' greedy continuations) is not measured: assumed as much faster than the CPU
# as a step is (141 times).
SECONDS_PER_PARAM_INPUT_PREP = {"cpu": 2.5e-8, "cuda": 1.8e-10}
HELD_OUT_SHARE = 0.25  # of each task's inputs, never learned on (merging.learned.api.DEFAULT_HOLDOUT)
# The default run on a CPU: 2.5 minutes at the measured rates. A busy machine is slower: the first sized run on the
# SmolLM2 family (2 experts) took 1.85 times its estimate at load 3-5 (docs/benchmarks.md, "Learned merging"), and a
# visitor should be done within 5 minutes even then.
CPU_BUDGET_S = 150.0
GPU_BUDGET_S = 600.0
MIN_STEPS, MAX_STEPS = 10, 200
MIN_EXAMPLES, MAX_EXAMPLES = 4, 16


@dataclass(frozen=True)
class LearnSizing:
    """Defaults for one family on one device, and what they are expected to take."""

    examples_per_task: int
    batch_size: int
    steps: int
    eval_every: int  # held-out loss every this many steps (early stopping)
    prep_s: float
    step_s: float
    eval_s: float  # one held-out check

    @property
    def total_s(self) -> float:
        return self.prep_s + self.steps * self.step_s + (self.steps // self.eval_every) * self.eval_s


def _device_kind(device: str) -> str:
    return "cuda" if str(device).startswith("cuda") else "cpu"


def step_seconds(parameters: int, tasks: int, batch_size: int, method: str, device: str) -> float:
    """Expected seconds of one learning step."""
    passes = 1.0 if method == "samerging" else 0.5
    return parameters * tasks * batch_size * SECONDS_PER_PARAM_INPUT_STEP[_device_kind(device)] * passes


def prep_seconds(parameters: int, tasks: int, examples_per_task: int, device: str) -> float:
    """Expected seconds before the first step (teachers' answers, the start's search, reading the models)."""
    return parameters * tasks * examples_per_task * SECONDS_PER_PARAM_INPUT_PREP[_device_kind(device)]


def held_out(examples_per_task: int) -> int:
    """Inputs of a task kept aside for early stopping (as learn_merge splits them)."""
    return max(1, round(examples_per_task * HELD_OUT_SHARE)) if examples_per_task > 1 else 0


def train_batch(examples_per_task: int) -> int:
    """The batch a run learns on: every input not held out."""
    return max(1, min(16, examples_per_task - held_out(examples_per_task)))


def estimate(parameters: int, tasks: int, examples_per_task: int, steps: int, method: str, device: str
             ) -> LearnSizing:
    """What a run with these settings is expected to take."""
    batch = train_batch(examples_per_task)
    # a held-out check is one forward pass of the held-out inputs: about a sixth of a SAM step's work per input
    check = step_seconds(parameters, tasks, held_out(examples_per_task), "samerging", device) / 6
    return LearnSizing(examples_per_task, batch, steps, eval_every_for(steps),
                       prep_seconds(parameters, tasks, examples_per_task, device),
                       step_seconds(parameters, tasks, batch, method, device), check)


def eval_every_for(steps: int) -> int:
    """Held-out checks often enough that early stopping can act within the run (about ten of them)."""
    return max(1, min(10, steps // 10))


def sized_defaults(parameters: int, tasks: int, method: str = "samerging", device: str = "cpu",
                   budget_s: float | None = None) -> LearnSizing:
    """The most inputs and steps that fit the budget (CPU 2.5 minutes, GPU 10): inputs first (down to 4 a task, a
    batch of 3), then as many steps as the rest of the budget holds (10 to 200)."""
    budget = budget_s if budget_s is not None else (GPU_BUDGET_S if _device_kind(device) == "cuda" else CPU_BUDGET_S)
    best = estimate(parameters, tasks, MIN_EXAMPLES, MIN_STEPS, method, device)
    for examples in range(MAX_EXAMPLES, MIN_EXAMPLES - 1, -1):
        sizing = estimate(parameters, tasks, examples, MIN_STEPS, method, device)
        if sizing.total_s <= budget / 2 or examples == MIN_EXAMPLES:  # half the budget at most before many steps
            best = sizing
            break
    per_step = best.step_s + best.eval_s / max(1, best.eval_every)
    room = (budget - best.prep_s) / per_step if per_step > 0 else MAX_STEPS
    steps = int(max(MIN_STEPS, min(MAX_STEPS, room)))
    return estimate(parameters, tasks, best.examples_per_task, steps, method, device)


def duration_text(seconds: float) -> str:
    """'45 s', '3 min 20 s', '1 h 5 min'."""
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest:02d} s" if rest else f"{minutes} min"
    hours, rest = divmod(round(seconds / 60), 60)
    return f"{hours} h {rest} min"


def eta_seconds(done: int, total: int, elapsed_s: float) -> float | None:
    """Seconds left at the pace of the steps done so far (None before the first)."""
    if done <= 0:
        return None
    return elapsed_s / done * max(0, total - done)
