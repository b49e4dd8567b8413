"""One runner for many merges: sweeps and searches hand it points (a recipe, a seed, a task split) and get back
per-task results, computed either in this process or on Ray workers.

- `Scorer`: a LiveMerger (the base's and sources' tensors, read once) and one Evaluator per task split (the experts'
  answers computed once per split). `score(job)` merges the point's recipe and loads it into the evaluator's one
  scoring model in place (Evaluator.score_state), then scores it. Both runners call this one function, so the same
  points with the same seeds give the same numbers in process and on Ray. A scorer that owns its experts (build_scorer:
  a Ray worker, the command line) frees the expert models once their answers are computed (`Scorer.warm`).
- `InProcessRunner`: one Scorer, points one after another (what the page does by default).
- `RayRunner`: one Ray actor per device (a GPU, or a CPU worker) that builds its own Scorer from a `WorkerSpec` (paths
  and task sets, no tensors: every worker reads the models itself, once) and keeps it for every point it is given.
  A worker that dies has its point retried once on a fresh worker and the retry is reported (`PointOutcome.incident`);
  a point that fails twice is reported as failed, never dropped. Cancel (`should_stop`) kills the workers.

Ray is optional: `ray_available()` says whether it can be imported, and nothing here imports it before a RayRunner
is made (the app and the in-process runner work without it).
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch

from evaluation.agreement import Evaluator
from evaluation.answer_cache import AnswerCache
from evaluation.errors import SweepError
from evaluation.tasks import TaskSet, tasks_for_experts
from inference.loading import load_model
from merging.errors import MergeLabError
from merging.live import LiveMerger
from merging.recipe import Recipe
from merging.sources import open_model

ALL = "all"  # the split name of a plain sweep (the whole task set)
RAY_MISSING = ("Ray is not installed here, so sweeps and searches run in this process "
               "(pip install ray==2.60.0 for workers).")
LOCAL = "auto"  # --ray auto: start a local cluster
OBJECT_STORE_BYTES = 256 * 2**20  # points and results are small; keep Ray's shared memory small too
POLL_SECONDS = 0.2  # how often a Ray sweep looks at should_stop while waiting for points
START_SECONDS = 600  # a worker that is not ready by then never will be (no free CPU or GPU in the cluster)


def ray_available() -> bool:
    """True where Ray can be imported (it is optional: a small Space sweeps in process)."""
    if "ray" in sys.modules:
        return sys.modules["ray"] is not None  # None: imports of it are blocked
    return find_spec("ray") is not None


@dataclass
class PointJob:
    """One point to merge and score: a label for progress and errors, the recipe the merger runs (models named by
    the merger's keys), its seed, the task split to score it on, and fields the caller keeps with the result."""

    label: str
    recipe: Recipe
    seed: int = 0
    split: str = ALL
    point: dict[str, Any] = field(default_factory=dict)


@dataclass
class PointOutcome:
    """What one point gave: the EvalResult's summary, per-task scores and answers, the seconds its merge and scoring
    took on the worker, where it ran, and what happened on the way (a worker that died, a retry, a failure)."""

    index: int
    job: PointJob
    summary: dict[str, float | None] | None = None
    scores: dict[str, dict[str, Any]] | None = None
    answers: dict[str, list[str | None]] | None = None
    seconds: float = 0.0
    wall_seconds: float = 0.0  # from hand-out to result, as the runner saw it (Ray: includes the round trip)
    worker: str = "in process"
    attempts: int = 1
    incident: str | None = None  # e.g. "worker 1 (pid 123) died during this point; retried on a new worker"
    failed: bool = False

    def value(self, metric: str) -> float | None:
        """`accuracy` (a mean over tasks) or `<task>.<metric>`; None for a failed point."""
        if self.failed or self.summary is None:
            return None
        task, _, name = metric.rpartition(".")
        return self.scores[task][name] if task else self.summary[name]


OnPoint = Callable[[PointOutcome, int, int], Any]  # on_point(outcome, done, total): called as each point finishes


# --- the scorer: what every worker holds ----------------------------------------------------------------------

class Scorer:
    """A merger and one evaluator per split; `score(job)` merges the job's recipe and scores it. With
    `release_experts` (a scorer that owns its experts: build_scorer's, on a Ray worker or the command line), `warm()`
    computes the experts' answers, then keeps one of the expert models as the scoring model and frees the others
    (Evaluator.release_experts): a worker then holds the merger's tensors and that one model, not a full model per
    expert plus a scoring copy (for a 7B pair in bf16, 14.5 GB instead of 43.5 GB besides the merger's)."""

    def __init__(self, merger: LiveMerger, evaluators: Mapping[str, Evaluator], *, release_experts: bool = False
                 ) -> None:
        self.merger = merger
        self.evaluators = dict(evaluators)
        self.release_experts = release_experts

    def tasks(self, split: str = ALL) -> TaskSet:
        return self._evaluator(split).tasks

    def _evaluator(self, split: str) -> Evaluator:
        if split not in self.evaluators:
            raise SweepError(f"No task split {split!r} here (splits: {', '.join(self.evaluators)}).")
        return self.evaluators[split]

    def warm(self) -> None:
        """The experts' answers on every split (once; a sweep's first point would wait for them otherwise); then,
        with `release_experts`, one expert model becomes the scoring model and the others are freed."""
        for evaluator in self.evaluators.values():
            evaluator.expert_predictions()
        if self.release_experts:
            for evaluator in self.evaluators.values():
                evaluator.release_experts()
            gc.collect()  # the models are unreachable now; free them (and the GPU's cached blocks) before scoring
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def score(self, job: PointJob) -> dict[str, Any]:
        """Merge the point into the scoring model (in place) and score it: summary, scores, answers, seconds."""
        evaluator = self._evaluator(job.split)
        tick = time.perf_counter()
        try:
            state = self.merger.merge(job.recipe, seed=job.seed)
        except MergeLabError as error:
            raise SweepError(f"Point {job.label}: {error}") from None
        result = evaluator.score_state(state)
        del state
        return {"summary": result.summary(), "scores": {n: asdict(s) for n, s in result.scores.items()},
                "answers": result.answers, "seconds": time.perf_counter() - tick}


@dataclass
class WorkerSpec:
    """What a worker needs to build its own Scorer: the base and the models by the keys recipes name them with
    (paths, no tensors), each model's expert name, the task splits, and where and how to score."""

    base: str  # the base's key in recipes
    paths: dict[str, str]  # key -> model folder, the base's included
    expert_names: dict[str, str]  # key of a merged model -> the expert name its tasks use
    splits: dict[str, TaskSet]
    device: str = "cpu"
    dtype: str | None = None
    batch_size: int | None = None
    threads: int = 0  # merge threads (0: the spare cores in process; a Ray worker, given one CPU, uses 1)
    template: str | None = None  # key of the model merged weights are loaded into; None: the first expert's copy
    cache_dir: str | None = None  # the experts' answers on disk (shared by the workers of one machine)

    @property
    def models(self) -> list[str]:
        return [key for key in self.paths if key != self.base]


def read_state(path: str | Path) -> tuple[dict[str, torch.Tensor], int]:
    """All tensors of a model folder (memory-mapped reads) and its number of layers."""
    source = open_model(str(path))
    return {name: source.get(name) for name in source.tensor_names()}, source.num_layers


def expert_name(model_ref: str) -> str:
    """The expert name a recipe model stands for: its folder name (the zoo's folders are named after experts)."""
    return Path(model_ref).name


def recipe_spec(template: Recipe, tasks: TaskSet | Mapping[str, TaskSet], *,
                experts: Mapping[str, str] | None = None, device: str = "cpu", dtype: str | None = None,
                batch_size: int | None = None, threads: int = 0, cache_dir: str | None = None) -> WorkerSpec:
    """The WorkerSpec of a recipe file's models (keys: the recipe's model strings; experts named by folder, or by
    `experts` name -> model ref) scored on `tasks` (one task set, split "all", or several named splits), each cut
    to the tasks of those experts and composite tasks."""
    if not template.base_model:
        raise SweepError("The recipe has no base_model: a sweep merges task vectors, so name the base model.")
    refs = [m.model for m in template.models if m.model != template.base_model]
    by_ref = {str(v): k for k, v in (experts or {}).items()}
    names = {ref: by_ref.get(ref, expert_name(ref)) for ref in refs}
    splits = {ALL: tasks} if isinstance(tasks, TaskSet) else dict(tasks)
    kept = {name: tasks_for_experts(s, names.values(), whose="the recipe's models") for name, s in splits.items()}
    paths = {template.base_model: template.base_model, **{ref: ref for ref in refs}}
    return WorkerSpec(base=template.base_model, paths=paths, expert_names=names, splits=kept, device=device,
                      dtype=dtype, batch_size=batch_size, threads=threads, cache_dir=cache_dir)


def build_scorer(spec: WorkerSpec, *, release_experts: bool = True) -> Scorer:
    """Read the base and models once into a LiveMerger, load the experts, and make one evaluator per split. The
    scorer owns its experts: by default `warm()` frees them once their answers are known, keeping one as the
    scoring model (Scorer)."""
    base_state, num_layers = read_state(spec.paths[spec.base])
    merger = LiveMerger(base_state, {key: read_state(spec.paths[key])[0] for key in spec.models}, num_layers,
                        device=spec.device, threads=spec.threads or None)
    experts = {spec.expert_names[key]: load_model(spec.paths[key], device=spec.device, dtype=spec.dtype)
               for key in spec.models}
    template = None
    if spec.template is not None:
        template = load_model(spec.paths[spec.template], device=spec.device, dtype=spec.dtype)
    elif any(not t.is_classification for s in spec.splits.values() for t in s.tasks.values()):
        template = next((e for e in experts.values() if e.kind == "lm"), None)
    cache = AnswerCache(spec.cache_dir) if spec.cache_dir else None
    copies: dict = {}  # one scoring model for every split: a worker scores one point at a time
    evaluators = {name: Evaluator(tasks, experts, batch_size=spec.batch_size, template=template, answer_cache=cache,
                                  scoring_copies=copies)
                  for name, tasks in spec.splits.items()}
    return Scorer(merger, evaluators, release_experts=release_experts)


# --- in process -----------------------------------------------------------------------------------------------

class InProcessRunner:
    """Points one after another on one Scorer (the page's models, or ones read for the command line)."""

    workers = 1
    where = "in process"

    def __init__(self, scorer: Scorer, note: str = "") -> None:
        self.scorer = scorer
        self.note = note  # e.g. why not on Ray

    def tasks(self, split: str = ALL) -> TaskSet:
        return self.scorer.tasks(split)

    def run(self, jobs: Sequence[PointJob], on_point: OnPoint | None = None,
            should_stop: Callable[[], bool] | None = None) -> list[PointOutcome]:
        self.scorer.warm()
        outcomes = []
        for index, job in enumerate(jobs):
            if should_stop is not None and should_stop():
                break
            tick = time.perf_counter()
            outcome = PointOutcome(index, job, **self.scorer.score(job))
            outcome.wall_seconds = time.perf_counter() - tick
            outcomes.append(outcome)
            if on_point is not None:
                on_point(outcome, len(outcomes), len(jobs))
        return outcomes

    def close(self) -> None:
        """Nothing to stop (the scorer belongs to the caller)."""


def estimate_seconds(point_seconds: float, points: int, workers: int = 1) -> float:
    """The time `points` points take at `point_seconds` each on `workers` parallel workers (whole rounds)."""
    rounds = -(-points // max(1, workers))
    return point_seconds * rounds


# --- on Ray ---------------------------------------------------------------------------------------------------

def connect_ray(address: str, *, num_cpus: int | None = None) -> bool:
    """Start a local cluster (`address` "auto", on 127.0.0.1) or join one at `address`; returns True when this
    call started it (the caller shuts it down). Reuses a connection this process already has. Workers import this
    repository from its path here (PYTHONPATH), so on a joined cluster every node needs it at the same path (or
    MergeLab installed), and the model folders too."""
    if not ray_available():
        raise SweepError(RAY_MISSING)
    import ray  # deferred: optional dependency (module docstring)

    if ray.is_initialized():
        return False
    root = str(Path(__file__).resolve().parent.parent)
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}}
    if address == LOCAL:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 _node_ip_address="127.0.0.1",
                 object_store_memory=OBJECT_STORE_BYTES, runtime_env=env, log_to_driver=False,
                 logging_level="WARNING")
    else:
        ray.init(address=address, runtime_env=env, log_to_driver=False, logging_level="WARNING")
    return True


def _worker_class() -> Any:
    """The Ray actor class (made on first use, so importing this module never imports Ray)."""
    import ray  # deferred: optional dependency

    @ray.remote(max_restarts=0, max_task_retries=0)
    class SweepWorker:
        """Holds one Scorer for the whole sweep or search; scores the points it is given."""

        def __init__(self, spec: WorkerSpec) -> None:
            threads = max(1, spec.threads)
            torch.set_num_threads(threads)
            self.scorer = build_scorer(replace(spec, threads=threads))

        def pid(self) -> int:
            return os.getpid()

        def warm(self) -> bool:
            self.scorer.warm()
            return True

        def score(self, job: PointJob) -> dict[str, Any]:
            return self.scorer.score(job)

    return SweepWorker


class RayRunner:
    """`workers` Ray actors, each holding a Scorer built from `spec`; points go to whichever worker is free.
    Connect first (connect_ray) or let `address` do it; `close()` ends the workers (and a cluster it started)."""

    def __init__(self, spec: WorkerSpec, *, workers: int = 2, address: str | None = LOCAL,
                 start_seconds: float = START_SECONDS) -> None:
        if workers < 1:
            raise SweepError(f"Ray needs at least one worker, not {workers}.")
        self.spec = spec
        self.workers = workers
        self.start_seconds = start_seconds
        self.where = f"Ray, {workers} worker{'s' * (workers != 1)}"
        self.note = ""
        self._started_cluster = connect_ray(address, num_cpus=None) if address else False
        self._actors: list[Any] = []
        self._names: dict[int, str] = {}
        self._next_name = 0

    def tasks(self, split: str = ALL) -> TaskSet:
        return self.spec.splits[split]

    def _new_actor(self) -> Any:
        options = {"num_gpus": 1, "num_cpus": 1} if self.spec.device.startswith("cuda") else {"num_cpus": 1}
        actor = _worker_class().options(**options).remote(self.spec)
        self._next_name += 1
        self._names[id(actor)] = f"worker {self._next_name}"
        return actor

    def start(self) -> None:
        """Start the workers: the first one computes the experts' answers, the others reuse them from the answer
        cache when there is one (else each computes its own)."""
        import ray  # deferred: optional dependency

        if self._actors:
            return
        self._actors = [self._new_actor() for _ in range(self.workers)]
        try:
            ray.get(self._actors[0].warm.remote(), timeout=self.start_seconds)  # its answers land in the cache
            ray.get([actor.warm.remote() for actor in self._actors[1:]], timeout=self.start_seconds)
        except ray.exceptions.GetTimeoutError:
            self._stop()
            raise SweepError(f"{self.workers} Ray worker(s) did not start within {self.start_seconds:g} s: the cluster has no "
                             f"free {'GPU' if self.spec.device.startswith('cuda') else 'CPU'} for each (another "
                             "sweep's workers may hold them); use fewer workers or end the other sweep.") from None

    def worker_pids(self) -> list[int]:
        """The workers' process ids (a test kills one to see its point retried)."""
        import ray  # deferred: optional dependency

        self.start()
        return ray.get([actor.pid.remote() for actor in self._actors])

    def run(self, jobs: Sequence[PointJob], on_point: OnPoint | None = None,
            should_stop: Callable[[], bool] | None = None) -> list[PointOutcome]:
        """Every job on the workers, as they free up; outcomes in the order points finish."""
        import ray  # deferred: optional dependency

        self.start()
        queue = list(enumerate(jobs))
        attempts: dict[int, int] = {}
        running: dict[Any, tuple[int, Any, float]] = {}  # object ref -> (job index, actor, hand-out time)
        idle = list(self._actors)
        outcomes: list[PointOutcome] = []
        incidents: dict[int, str] = {}
        while queue or running:
            if should_stop is not None and should_stop():
                self._stop()
                break
            while queue and idle:
                index, job = queue.pop(0)
                actor = idle.pop(0)
                attempts[index] = attempts.get(index, 0) + 1
                running[actor.score.remote(job)] = (index, actor, time.perf_counter())
            done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_SECONDS)
            for ref in done:
                index, actor, handed = running.pop(ref)
                outcome = self._collect(ref, index, jobs[index], actor, handed, attempts[index], incidents)
                if outcome is None:  # the worker died: a fresh one retries the point (once)
                    idle.append(self._replace(actor))
                    queue.insert(0, (index, jobs[index]))
                    continue
                idle.append(self._replace(actor) if outcome.failed else actor)
                outcomes.append(outcome)
                if on_point is not None:
                    on_point(outcome, len(outcomes), len(jobs))
        return outcomes

    def _collect(self, ref: Any, index: int, job: PointJob, actor: Any, handed: float, attempt: int,
                 incidents: dict[int, str]) -> PointOutcome | None:
        """The point's outcome; None when its worker died and the point gets its one retry."""
        import ray  # deferred: optional dependency

        name = self._names.get(id(actor), "a worker")
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as error:
            what = f"{name} died during this point ({type(error).__name__})"
            if attempt < 2:
                incidents[index] = what + "; retried on a new worker"
                return None
            return PointOutcome(index, job, worker=name, attempts=attempt, failed=True,
                                incident=f"{incidents.get(index, '')}; {what} again: not scored".lstrip("; "))
        except ray.exceptions.RayTaskError as error:
            cause = error.as_instanceof_cause()
            if isinstance(cause, MergeLabError):
                raise cause from None
            raise SweepError(f"Point {job.label} failed on {name}: {error}") from None
        return PointOutcome(index, job, **result, wall_seconds=time.perf_counter() - handed, worker=name,
                            attempts=attempt, incident=incidents.get(index))

    def _replace(self, dead: Any) -> Any:
        import ray  # deferred: optional dependency

        self._actors = [a for a in self._actors if a is not dead]
        ray.kill(dead, no_restart=True)
        actor = self._new_actor()
        ray.get(actor.warm.remote(), timeout=self.start_seconds)
        self._actors.append(actor)
        return actor

    def _stop(self) -> None:
        """Cancel: end every worker now (a running point is abandoned); the next run starts fresh ones."""
        import ray  # deferred: optional dependency

        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []

    def close(self) -> None:
        """End the workers, and the local cluster when this runner started it."""
        import ray  # deferred: optional dependency

        if not ray.is_initialized():
            return
        self._stop()
        if self._started_cluster:
            ray.shutdown()
