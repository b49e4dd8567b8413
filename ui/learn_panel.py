"""Learn panel: AdaMerging / SAMerging learn layer-wise merging coefficients from a few unlabeled prompts per task
(the zoo's or an uploaded file), with a live loss curve, the learned coefficients as a tasks × layers heatmap, and the
result evaluated beside task arithmetic and TIES."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from evaluation import baselines
from evaluation.charts import coefficients_figure, comparison_figure, comparison_markdown, loss_figure
from merging.errors import MergeLabError, TaskSetError
from merging.learned import budget
from merging.learned.api import describe_run, learn_merge
from merging.learned.inputs import read_inputs
from merging.learned.recipe_io import recipe_dict
from merging.recipe import Recipe
from merging.settings import MergeSettings
from merging.sources import open_model
from ui.evaluate_panel import evaluator_for, task_set_for
from ui.feedback import guarded
from ui.fields import choice_field, number_field
from ui.hosting import HostConfig
from ui.resources import device, on_gpu
from ui.session import Session
from ui.workspace import build_recipe, require_models, write_learned

LEARN_METHODS = ("samerging", "adamerging")


@dataclass
class LearnSettings:
    """The Learn tab's controls. `rho` is SAMerging's radius relative to λ (‖ε‖/‖λ‖), not the paper's absolute ρ;
    with `auto_init` the start is the best constant λ by the training loss and `init` is not used."""

    method: str = "samerging"
    examples_per_task: int = 16
    steps: int = 200
    rho: float = 0.05
    init: float = 0.3
    auto_init: bool = True

    @classmethod
    def from_controls(cls, method: Any, examples: Any, steps: Any, rho: Any, init: Any, auto_init: Any
                      ) -> LearnSettings:
        """The controls as sent to /learn, each checked (finite, in range, of its kind) before any work."""
        return cls(choice_field(method, "Learning method", LEARN_METHODS),
                   number_field(examples, "Examples per task", 1, 1024, integer=True),
                   number_field(steps, "Steps", 1, 5000, integer=True), number_field(rho, "The SAM radius", 0, 1),
                   number_field(init, "The starting λ", -100, 100), bool(auto_init))

    def check(self) -> None:
        if self.method not in LEARN_METHODS:
            raise MergeLabError(f"Learning method must be one of {', '.join(LEARN_METHODS)}.")
        if not 1 <= self.examples_per_task <= 1024:
            raise MergeLabError("Examples per task must be between 1 and 1024.")
        if not 1 <= self.steps <= 5000:
            raise MergeLabError("Steps must be between 1 and 5000.")
        if not 0 <= self.rho <= 1:
            raise MergeLabError("The SAM radius ‖ε‖/‖λ‖ must be between 0 and 1 (0.05 = 5 % of ‖λ‖; 0 = plain Adam).")


def unlabeled_inputs(session: Session, uploaded: str | None, per_task: int) -> dict[str, list[str]]:

    path = uploaded or session.unlabeled_path
    if path is None:
        raise TaskSetError("Upload unlabeled prompts (JSONL, one {\"expert\": name, \"prompt\" or \"text\": ...} a "
                           "line) for these models.")
    # An upload is a server-side copy (/tmp/gradio/<hash>/NAME): messages name the file the user chose.
    return read_inputs(path, session.labels, per_task, display=Path(path).name)


def learn(session: Session, config: HostConfig, settings: LearnSettings, uploaded: str | None = None
          ) -> Iterator[tuple[Any, Any, str]]:
    """/learn: yields (loss curve, coefficients heatmap or None, status) while training; the learned merge
    becomes the session's merged model."""
    require_models(session)
    settings.check()
    inputs = unlabeled_inputs(session, uploaded, int(settings.examples_per_task))
    experts = {s.label: s.path for s in session.sources}
    updates: queue.Queue = queue.Queue()
    session.cancel.clear()
    worker, outcome = _start_training(session, settings, experts, inputs, updates)
    expected = sizing_for(session, settings)
    yield (loss_figure([], settings.method), None,
           (f"Preparing teachers and batches… (about {budget.duration_text(expected.prep_s)}; the whole run about "
           f"{budget.duration_text(expected.total_s)})"))
    yield from _loss_updates(updates, settings)
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    if session.cancel.is_set() and len(result.losses) < settings.steps:
        yield loss_figure(result.losses, settings.method), None, "Cancelled: the merge was not changed."
        return
    data = recipe_dict(session.base.label, list(result.tasks), result.names, result.coefficients)  # by label
    write_learned(session, result, Recipe.from_dict(data), result.seconds)  # the one place a merge is recorded
    yield (loss_figure(result.losses, settings.method),
           coefficients_figure(result.tasks, result.names, result.coefficients),
           (f"✓ Learned {result.coefficients.numel()} coefficients in {result.seconds:.1f} s "
            f"(final loss {result.losses[-1]:.4f}); {describe_run(result)}. "
            "Chat, Evaluate and Export now use the learned merge."))


def _start_training(session: Session, settings: LearnSettings, experts: dict[str, Path],
                    inputs: dict[str, list[str]], updates: queue.Queue) -> tuple[threading.Thread, dict[str, Any]]:
    """learn_merge in a worker thread, so the handler can stream the losses: each step puts (step, loss) on
    `updates`, and None at the end; the returned dict then holds the "result" or the "error"."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = learn_merge(
                settings.method, session.base.path, experts, inputs, steps=int(settings.steps),
                rho=0.07 if settings.method == "samerging" else None,
                rho_relative=float(settings.rho) if settings.method == "samerging" else None,
                init="auto" if settings.auto_init else float(settings.init),
                batch_size=budget.train_batch(int(settings.examples_per_task)), device=device(),
                eval_every=budget.eval_every_for(int(settings.steps)),
                progress=lambda step, loss: updates.put((step, loss)), cancel=session.cancel.is_set)
        except Exception as error:  # noqa: BLE001 - re-raised in the handler's thread, as a message
            outcome["error"] = error
        finally:
            updates.put(None)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    return worker, outcome


def _loss_updates(updates: queue.Queue, settings: LearnSettings) -> Iterator[tuple[Any, None, str]]:
    """The loss curve so far, redrawn at most every 0.3 s (plenty for the eye), until the worker's None; the status
    says how long the remaining steps take at the pace of those done."""
    losses: list[float] = []
    last_yield, first_step = 0.0, None
    while (item := updates.get()) is not None:
        losses.append(float(item[1]))
        now = time.monotonic()
        first_step = first_step or (now, item[0])  # timed from the first step: preparation is not a step
        if now - last_yield > 0.3:
            last_yield = now
            left = budget.eta_seconds(item[0] - first_step[1], int(settings.steps) - first_step[1],
                                      now - first_step[0])
            eta = f" · about {budget.duration_text(left)} left" if left is not None else ""
            yield (loss_figure(losses, settings.method), None,
                   (f"Step {item[0]}/{settings.steps}: loss {item[1]:.4f}{eta} (stops earlier when the held-out "
                   "loss stops improving)"))


def model_parameters(folder: Path) -> int:
    """Parameters of a model folder, from its safetensors headers (nothing loaded)."""
    with open_model(folder) as source:
        total = 0
        for name in source.tensor_names():
            count = 1
            for size in source.shape(name):
                count *= size
            total += count
        return total


def sizing_for(session: Session, settings: LearnSettings | None = None) -> budget.LearnSizing:
    """The expected time of `settings` on the session's models and device; without settings, the defaults sized to
    fit them (merging.learned.budget)."""
    require_models(session)
    parameters, tasks = model_parameters(session.base.path), len(session.sources)
    if settings is None:
        return budget.sized_defaults(parameters, tasks, "samerging", device())
    return budget.estimate(parameters, tasks, int(settings.examples_per_task), int(settings.steps),
                           settings.method, device())


def estimate_markdown(session: Session | None, settings: LearnSettings) -> str:
    """Before a run: what it should take here, and on a GPU (or on this GPU, and a CPU)."""
    if session is None or session.base is None:
        return ""
    here = sizing_for(session, settings)
    parameters, tasks = model_parameters(session.base.path), len(session.sources)
    other = "cpu" if device() == "cuda" else "cuda"
    there = budget.estimate(parameters, tasks, here.examples_per_task, here.steps, settings.method, other)
    where = "this GPU" if device() == "cuda" else "this CPU"
    return (f"Expected on {where}: about **{budget.duration_text(here.total_s)}** (preparation "
            f"{budget.duration_text(here.prep_s)}, then {here.steps} steps × {budget.duration_text(here.step_s)} on "
            f"batches of {here.batch_size} per task; fewer when the held-out loss stops improving). On "
            f"{'a CPU' if other == 'cpu' else 'one GPU (H100 class)'}: about {budget.duration_text(there.total_s)}.")


def compare_with_baselines(session: Session, config: HostConfig, per_task: int = 20) -> tuple[Any, str]:
    """/learn_compare: the learned merge beside task arithmetic (one λ, and one λ per expert) and TIES, their
    settings chosen on the prompts the merge was learned from, all scored on the same tasks: accuracy on the true
    answers and agreement with the experts, apart, each with the scored set's 95 % error, and the learned merge
    minus each baseline with its paired interval."""
    require_models(session)
    if session.learned is None:
        raise MergeLabError("Learn coefficients first, then compare.")
    if session.live is None:
        reason = session.live_plan.reason if session.live_plan is not None else "the models are not read yet"
        raise MergeLabError(f"Comparing needs the models in memory, and live merging is off ({reason}).")
    tasks = task_set_for(session, None, per_task)
    evaluator = evaluator_for(session, tasks, (tasks.source, per_task, tuple(session.labels), session.base.ref))

    def merge(settings: dict[str, Any]) -> Any:
        return session.live.merge(build_recipe(session, MergeSettings.from_dict(settings)), seed=0)

    method = session.learned.method
    scores, choices = baselines.compare_fairly(evaluator, method, session.learned.merged, merge,
                                               len(session.sources), session.learned.inputs)
    error = baselines.comparison_error(evaluator, method, scores)
    markdown = comparison_markdown(scores, {name: choice.describe() for name, choice in choices.items()}, error)
    why_not = baselines.why_not_better(method, error)
    if why_not is not None:
        markdown += f"\n\n**Why the learned merge is not shown to beat task arithmetic here:** {why_not}"
    return comparison_figure(scores, error), markdown


# --- components ----------------------------------------------------------------------------------------------------

@dataclass
class LearnPanel:
    method: gr.Radio
    prompts: gr.File
    examples: gr.Slider
    steps: gr.Slider
    rho: gr.Slider
    init: gr.Slider
    auto_init: gr.Checkbox
    run: gr.Button
    cancel: gr.Button
    status: gr.Markdown
    loss: gr.Plot
    coefficients: gr.Plot
    compare: gr.Button
    compare_chart: gr.Plot
    compare_table: gr.Markdown
    estimate: gr.Markdown | None = None  # what a run with the controls' settings should take, here and on a GPU
    sized_for: gr.State | None = None  # the models the controls were last sized for (their defaults follow them)

    @property
    def settings_inputs(self) -> list[gr.components.Component]:
        return [self.method, self.examples, self.steps, self.rho, self.init, self.auto_init]


def build(config: HostConfig) -> LearnPanel:
    gr.Markdown("Learn one coefficient per task and tensor from a few **unlabeled** prompts: SAMerging distils each "
                "expert into the merge with sharpness-aware steps; AdaMerging minimises the merge's entropy (on the "
                "LM zoo that favours confident echoes and loses to task arithmetic: use SAMerging there). A quarter "
                "of each task's prompts is held out to choose when to stop.")
    with gr.Row():
        method = gr.Radio(list(LEARN_METHODS), value="samerging", label="Method", elem_id="learn-method")
        prompts = gr.File(label="Unlabeled prompts (optional, JSONL; default: the zoo's)", type="filepath",
                          file_types=[".jsonl", ".json"], elem_id="learn-prompts")
    with gr.Row():
        examples = gr.Slider(1, 256, value=16, step=1, label="Examples per task", elem_id="learn-examples")
        steps = gr.Slider(1, 1000, value=200, step=1, label="Steps (at most: stops early on held-out inputs)",
                          elem_id="learn-steps")
        rho = gr.Slider(0.0, 0.3, value=0.05, step=0.01, label="SAM radius ‖ε‖/‖λ‖", elem_id="learn-rho",
                        info="0.05 = a step of 5 % of ‖λ‖ toward the worst nearby λ; 0 = plain Adam")
        auto_init = gr.Checkbox(value=True, label="Start at the best constant λ (by the loss)",
                                elem_id="learn-auto-init")
        init = gr.Slider(-1.0, 1.0, value=0.3, step=0.05, label="Initial λ", elem_id="learn-init", visible=False)
    estimate = gr.Markdown(elem_id="learn-estimate")
    with gr.Row():
        run = gr.Button("Learn", variant="primary", elem_id="learn-run")
        cancel = gr.Button("Cancel", variant="stop", elem_id="learn-cancel")
    status = gr.Markdown(elem_id="learn-status")
    with gr.Row():
        loss = gr.Plot(label="Loss", elem_id="learn-loss")
        coefficients = gr.Plot(label="Coefficients", elem_id="learn-coefficients")
    compare = gr.Button("Evaluate beside task arithmetic and TIES", elem_id="learn-compare")
    compare_chart = gr.Plot(label="Comparison", elem_id="learn-compare-chart")
    compare_table = gr.Markdown(elem_id="learn-compare-table")
    return LearnPanel(method, prompts, examples, steps, rho, init, auto_init, run, cancel, status, loss, coefficients,
                      compare, compare_chart, compare_table, estimate=estimate, sized_for=gr.State(""))


def wire(panel: LearnPanel, state: gr.State, config: HostConfig) -> None:
    @guarded(config, "learn")
    def run(session: Session, method: str, examples: float, steps: float, rho: float, init: float, auto_init: bool,
            prompts: str | None):
        settings = LearnSettings.from_controls(method, examples, steps, rho, init, auto_init)
        yield from learn(session, config, settings, prompts)

    run = on_gpu(run)  # ZeroGPU on a Space; unchanged elsewhere
    panel.run.click(run, [state, *panel.settings_inputs, panel.prompts],
                            [panel.loss, panel.coefficients, panel.status], api_name="learn")

    def cancel(session: Session) -> str:
        session.cancel.set()
        return "Cancelling…"

    panel.cancel.click(cancel, state, panel.status, api_visibility="private")
    # ρ belongs to SAMerging only; the initial λ slider only matters without the automatic start.
    panel.method.change(lambda m: gr.update(visible=m == "samerging"), panel.method, panel.rho,
                        api_visibility="private")
    panel.auto_init.change(lambda auto: gr.update(visible=not auto), panel.auto_init, panel.init,
                           api_visibility="private")

    @guarded(config, "compare")
    def compare(session: Session, progress: gr.Progress = gr.Progress()):
        progress(0.1, desc="Choosing the baselines on the learning prompts, then scoring all merges…")
        return compare_with_baselines(session, config)

    panel.compare.click(compare, state, [panel.compare_chart, panel.compare_table], api_name="learn_compare")


def models_key(session: Session | None) -> str:
    if session is None or session.base is None:
        return ""
    return "|".join([str(session.base.path), *(str(s.path) for s in session.sources)])


def sized_controls(session: Session | None, sized_for: str, *values: Any) -> list[Any]:
    """On opening Learn: the examples and steps sized to the session's models and device (merging.learned.budget)
    the first time these models are seen, values the user set left alone otherwise; and the estimate."""
    key = models_key(session)
    examples, steps = gr.update(), gr.update()
    if key and key != sized_for:
        sized = sizing_for(session)
        # only values that change are sent: an update equal to what is shown could land after the user's own typing
        if _number(values[1]) != sized.examples_per_task:
            examples = gr.update(value=sized.examples_per_task)
        if _number(values[2]) != sized.steps:
            steps = gr.update(value=sized.steps)
        values = (values[0], sized.examples_per_task, sized.steps, *values[3:])
    return [examples, steps, estimate_for(session, *values), key]


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def estimate_for(session: Session | None, method: Any, examples: Any, steps: Any, rho: Any, init: Any,
                 auto_init: Any) -> str:
    try:
        return estimate_markdown(session, LearnSettings.from_controls(method, examples, steps, rho, init, auto_init))
    except MergeLabError as error:  # a value being typed: say what is wrong where the estimate goes
        return f"*{error}*"


def wire_sizing(tab: gr.Tab, panel: LearnPanel, state: gr.State) -> None:
    """Opening the Learn tab sizes its defaults to the models; every settings change redraws the estimate."""
    inputs = [state, panel.sized_for, *panel.settings_inputs]
    tab.select(sized_controls, inputs, [panel.examples, panel.steps, panel.estimate, panel.sized_for],
               api_visibility="private", show_progress="hidden")
    gr.on([c.change for c in panel.settings_inputs], estimate_for, [state, *panel.settings_inputs], panel.estimate,
          api_visibility="private", show_progress="hidden")
