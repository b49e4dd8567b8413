"""evaluation.runner and evaluation.search on a real local Ray cluster (127.0.0.1, 2 CPU workers) and in process, on
the shipped tiny LM zoo: the same grid gives the same numbers either way, a killed worker's point is retried and
reported, cancel stops the workers, and a small search reports held-out scores beside the grid's best."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from evaluation.errors import SweepError
from evaluation.runner import (
    RAY_MISSING,
    InProcessRunner,
    PointJob,
    RayRunner,
    build_scorer,
    connect_ray,
    ray_available,
    recipe_spec,
)
from evaluation.search import SearchSpace, recipe_build, recipe_grid, run_search, split_tasks
from evaluation.sweep import point_recipe, run_sweep
from evaluation.tasks import load_tasks
from merging.recipe import Recipe, load_recipe

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "assets" / "zoo" / "lm"
GRID = {"weights": [0.5, 1.0], "densities": [0.3, 1.0]}
pytestmark = pytest.mark.timeout(900)  # a loaded 2-core machine starts Ray workers slowly


def _template() -> Recipe:
    return Recipe.from_dict({"merge_method": "ties", "base_model": str(ZOO / "base"),
                             "models": [{"model": str(ZOO / "math")}, {"model": str(ZOO / "japanese")}]})


def _spec():
    tasks = load_tasks(ROOT / "assets" / "tasks" / "zoo_lm.jsonl").limited(4)
    return recipe_spec(_template(), {"all": tasks, **split_tasks(tasks, 0.5, seed=0)}, threads=1)


@pytest.fixture(scope="module")
def ray_runner():
    """One local cluster and one 2-worker runner for the module (starting workers is the slow part)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20,
             _node_ip_address="127.0.0.1", log_to_driver=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    runner = RayRunner(_spec(), workers=2, address=None)
    yield runner
    runner.close()
    ray.shutdown()


@pytest.fixture(scope="module")
def in_process():
    """The same spec scored in this process, one torch thread as each Ray worker has."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield InProcessRunner(build_scorer(replace(_spec(), threads=1)))
    torch.set_num_threads(before)


def _sweep(runner, **kwargs):
    return run_sweep(_template(), None, None, runner=runner, metric="japanese_math.accuracy", seed=3, **GRID,
                     **kwargs)


def _numbers(result):
    return [(p.weight, p.density, p.scores, p.answers) for p in result.points]


def test_the_same_grid_gives_the_same_numbers_in_process_and_on_ray(ray_runner, in_process):
    seen = []
    on_ray = _sweep(ray_runner, partial=lambda result: seen.append(len(result.points)))
    here = _sweep(in_process)
    assert len(on_ray.points) == 4 and _numbers(on_ray) == _numbers(here)
    assert seen == [1, 2, 3, 4]  # the page's heatmap fills in point by point
    assert {p.worker for p in on_ray.points} <= {"worker 1", "worker 2"} and on_ray.where == "Ray, 2 workers"
    assert all(p.attempts == 1 and p.incident is None for p in on_ray.points)


def test_a_killed_worker_has_its_point_retried_once_and_reported(ray_runner, in_process):
    victim = ray_runner.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    _wait_gone(victim)
    result = _sweep(ray_runner)
    assert len(result.points) == 4 and not result.failed  # nothing dropped
    retried = [p for p in result.points if p.attempts == 2]
    assert len(retried) == 1 and "died" in retried[0].incident and "retried" in retried[0].incident
    assert _numbers(result) == _numbers(_sweep(in_process))  # the retry scored what the dead worker would have
    assert victim not in ray_runner.worker_pids()


class _EndsItsWorker:
    """Unpickled on a Ray worker (as a point's argument is), it ends that process: a point whose worker dies on every
    attempt, made from nothing but what a point carries."""

    def __reduce__(self):
        return (os._exit, (1,))


def test_a_point_that_kills_every_worker_is_reported_failed_not_dropped(ray_runner):
    template = _template()
    jobs = [PointJob(label=f"point {k}", recipe=point_recipe(template, "ties", 0.5, density), seed=3)
            for k, density in enumerate((0.3, 1.0))]
    jobs.insert(1, PointJob(label="deadly", recipe=point_recipe(template, "ties", 0.5, 0.5), seed=3,
                            point={"payload": _EndsItsWorker()}))
    outcomes = ray_runner.run(jobs)
    assert sorted(o.index for o in outcomes) == [0, 1, 2]  # every point reported, none dropped
    failed = [o for o in outcomes if o.failed]
    assert [o.job.label for o in failed] == ["deadly"] and failed[0].attempts == 2
    assert "retried" in failed[0].incident and "again: not scored" in failed[0].incident
    assert failed[0].value("accuracy") is None
    assert all(o.summary is not None and o.attempts == 1 for o in outcomes if not o.failed)
    assert len(_sweep(ray_runner).points) == 4  # the runner goes on with fresh workers


def test_cancel_stops_the_workers(ray_runner):
    pids = ray_runner.worker_pids()
    done: list[int] = []
    result = _sweep(ray_runner, partial=lambda r: done.append(len(r.points)), should_stop=lambda: bool(done))
    assert 1 <= len(result.points) < 4  # stopped after the first point
    for pid in pids:
        _wait_gone(pid)  # cancel ended both workers
    assert len(_sweep(ray_runner).points) == 4  # the next sweep starts fresh ones


def test_workers_that_cannot_start_are_reported_not_waited_for(ray_runner):
    ray_runner.start()  # its two workers hold the cluster's two CPUs
    crowded = RayRunner(_spec(), workers=1, address=None, start_seconds=3)
    with pytest.raises(SweepError, match="did not start within 3 s"):
        crowded.start()
    crowded.close()


def test_a_small_search_on_ray_reports_held_out_scores_beside_the_grid(ray_runner, tmp_path):
    template = _template()
    models = tuple(m.model for m in template.models)
    space = SearchSpace("ties", models, layer_ranges=2)
    grid = recipe_grid(template, "ties", [0.5, 1.0], [0.5])
    result = run_search(ray_runner, space, recipe_build(template, space), budget=4, sampler="tpe", seed=1,
                        metric="accuracy", grid=grid)
    assert len(result.trials) == 4 and result.where == "Ray, 2 workers"
    best, grid_best = result.best, result.grid_best
    assert best.search_value == max(t.search_value for t in result.trials)
    assert best.held_out_value is not None and grid_best.held_out_value is not None
    assert grid_best.search_value == max(c.search_value for c in grid)
    weight = best.recorded.to_dict()["models"][0]["parameters"]["weight"]
    assert isinstance(weight, list) and len(weight) == 2  # a gradient over two layer ranges
    written = result.write(tmp_path / "search.json")
    assert written["yaml"].name.endswith("mergekit_config.yml")
    assert load_recipe(written["yaml"]).to_dict() == best.recorded.to_dict()


@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_the_same_seed_proposes_the_same_recipes(in_process, sampler):
    template = _template()
    space = SearchSpace("ties", tuple(m.model for m in template.models))

    def search(seed):
        return run_search(in_process, space, recipe_build(template, space), budget=3, sampler=sampler, seed=seed)

    first, again, other = search(5), search(5), search(6)
    assert [t.params for t in first.trials] == [t.params for t in again.trials]
    assert [t.search_value for t in first.trials] == [t.search_value for t in again.trials]
    assert [t.params for t in first.trials] != [t.params for t in other.trials]
    assert first.best.held_out_value is not None and first.grid_best is None


def test_splits_hold_out_a_share_of_every_task():
    tasks = load_tasks(ROOT / "assets" / "tasks" / "zoo_lm.jsonl").limited(5)
    splits = split_tasks(tasks, 0.4, seed=0)
    for name in tasks.tasks:
        search, held = splits["search"].tasks[name].inputs, splits["held_out"].tasks[name].inputs
        assert len(held) == 2 and len(search) == 3 and not set(search) & set(held)
    with pytest.raises(SweepError, match="at least 2 per task"):
        split_tasks(tasks.limited(1))


def test_without_ray_sweeps_run_in_process_and_say_so(monkeypatch, in_process, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # as where ray is not installed
    assert not ray_available()
    with pytest.raises(SweepError, match="Ray is not installed"):
        connect_ray("auto")
    assert len(run_sweep(_template(), None, None, runner=in_process, weights=[1.0], densities=[0.5]).points) == 1
    code = ("import sys; sys.modules['ray'] = None; import app, ui.sweep_search as p; from ui.hosting import "
            f"HostConfig; app.create_app(HostConfig(models_dir=__import__('pathlib').Path({str(tmp_path)!r}))); "
            "print(p.RUNNER_CHOICES[0], p.runner_note())")  # the page builds, and says it sweeps in process
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert RAY_MISSING in done.stdout


def _wait_gone(pid: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    raise AssertionError(f"process {pid} is still running")


def test_the_page_sweeps_on_ray_workers_as_in_process(ray_runner, in_process, tmp_path, monkeypatch):
    """The Evaluate tab's Run on: Ray workers give the page's in-process numbers (the cluster is the module's)."""
    from ui import evaluate_panel, models_panel, sweep_search
    from ui.hosting import HostConfig
    from ui.session import new_session

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ray_runner.close()  # the cluster has two CPUs: the module runner's workers give them to the page's
    config = HostConfig.detect(hosted=False, models_dir=tmp_path / "models")
    session = new_session()
    choice = models_panel.ModelsChoice("Zoo", "lm", ["math", "japanese"], "", "")
    assert "ready to merge" in models_panel.check_models(session, config, choice)

    def sweep(runner):
        return evaluate_panel.sweep(session, config, "ties", "0.5,1.0", "0.5", "japanese_math.accuracy", per_task=3,
                                    runner=runner)

    try:
        on_ray, here = sweep(sweep_search.RUNNER_CHOICES[1]), sweep(sweep_search.RUNNER_CHOICES[0])
    finally:
        sweep_search.close_page_runners()
    assert on_ray.where == "Ray, 2 workers" and here.where == "in process"
    assert _numbers(on_ray) == _numbers(here)


def test_a_stopped_search_keeps_what_it_scored_and_fails_nothing(in_process):
    template = _template()
    space = SearchSpace("ties", tuple(m.model for m in template.models))
    seen: list[int] = []
    result = run_search(in_process, space, recipe_build(template, space), budget=5, seed=0,
                        progress=lambda fraction, text: seen.append(1), should_stop=lambda: bool(seen))
    assert len(result.trials) == 1 and result.failed == [] and result.best.held_out_value is None


def test_a_scorer_keeps_one_scoring_model_for_all_its_splits(in_process):
    """A search scores on two splits (and a sweep on "all"): the merged weights go into one model, not one per split
    (on a 7B worker each copy is 14.5 GB)."""
    scorer = in_process.scorer
    job = PointJob(label="p", recipe=point_recipe(_template(), "ties", 0.5, 0.5), seed=3)
    for split in scorer.evaluators:
        scorer.score(replace(job, split=split))
    copies = {id(e._scoring_copies["__lm__"]) for e in scorer.evaluators.values()}
    assert len(scorer.evaluators) == 3 and len(copies) == 1


def test_a_scorer_that_owns_its_experts_frees_them_once_their_answers_are_known():
    """build_scorer's scorer (what each Ray worker holds), once warmed, holds one full model besides the merger: the
    first expert's, become the scoring model; the other expert model is unreferenced (freed), and no copy is made.
    Every split scores every point exactly as a scorer that kept the experts and a copy."""
    import gc
    import weakref

    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec = replace(_spec(), threads=1)
        freed, kept = build_scorer(spec), build_scorer(spec, release_experts=False)
        models = {name: e.model for name, e in freed.evaluators["all"].experts.items()}
        assert {id(e.model) for ev in freed.evaluators.values() for e in ev.experts.values()} == \
               {id(m) for m in models.values()}  # math and japanese, shared by the three splits' evaluators
        alive = {name: weakref.ref(m) for name, m in models.items()}
        del models
        freed.warm()
        freed.warm()  # a runner warms before every run: releasing again is a no-op
        kept.warm()
        gc.collect()
        assert alive["japanese"]() is None  # freed
        scoring = {id(ev._scoring_copies["__lm__"]) for ev in freed.evaluators.values()}
        assert scoring == {id(alive["math"]())}  # the math expert's own model scores: no copy beside it
        assert all(e.model is None for ev in freed.evaluators.values() for e in ev.experts.values())
        for density in (0.3, 1.0):
            job = PointJob(label="p", recipe=point_recipe(_template(), "ties", 0.5, density), seed=3)
            for split in freed.evaluators:
                ours, theirs = freed.score(replace(job, split=split)), kept.score(replace(job, split=split))
                assert {k: v for k, v in ours.items() if k != "seconds"} == \
                       {k: v for k, v in theirs.items() if k != "seconds"}
        assert kept.evaluators["all"]._scoring_copies["__lm__"] is not kept.evaluators["all"].experts["math"].model
    finally:
        torch.set_num_threads(before)
