"""Every backend keeps the seam's contract (evomerge/runner/backend.py): given the same jobs, the
in-process backend and the Ray backend return the same outcomes (status, objectives, item scores,
error) as one :class:`CandidateWorker` evaluating them in this process; every submitted job comes
back exactly once; a killed job never does; and on Ray a lost worker is an outcome with
``result=None``, after which the slot is replaced and the job's next attempt gives the worker's
result.

The synthetic engine scores the jobs (the point is the plumbing), merges of the zoo's models. A Ray backend dispatches only
to workers that have answered ``ready()``, so outcomes are polled for until they arrive, bounded
by the pytest timeout, never by a guess of how long a start takes."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from evomerge.result import EvalResult
from evomerge.runner.backend import Job, LocalBackend, Outcome
from evomerge.runner.worker import CandidateWorker, WorkerSpec
from tests.conftest import REPO

TASKS = (str(REPO / "fitness/zoo_add.yaml"), str(REPO / "fitness/zoo_caesar.yaml"))
FAULTS = {"nan_on": [3], "sleep_on": {"1": 0.3}}  # a NaN objective; a slow job (outcomes out of order on Ray)


def quiet(_m: str) -> None:
    pass


def recipe_json(sources: Path, w_a: float, w_b: float) -> str:
    from evomerge.recipe import recipe_from_dict

    return recipe_from_dict({"merge_method": "task_arithmetic", "base_model": str(sources / "base"), "models": [
        {"model": str(sources / "expert_add"), "parameters": {"weight": w_a}},
        {"model": str(sources / "expert_caesar"), "parameters": {"weight": w_b}}]}).canonical_json()


def make_jobs(sources: Path) -> list[Job]:
    weights = [(1.0, 0.5), (0.9, 0.2), (0.0, 1.5), (0.7, 0.7), (1.2, 0.4)]
    jobs = [Job(i, 1, recipe_json(sources, a, b), seed=i, deadline_s=None) for i, (a, b) in enumerate(weights)]
    jobs.append(Job(5, 1, '{"merge_method": "no_such_method"}', seed=0, deadline_s=None))  # the worker: failed
    return jobs


def spec(sources: Path, **faults: Any) -> WorkerSpec:
    return WorkerSpec(engine="synthetic", tasks=TASKS, sources=tuple(str(sources / n) for n in ("base", "expert_add", "expert_caesar")),
                      faults={**FAULTS, **faults})


def comparable(result: EvalResult) -> tuple:
    """What must agree between backends (NaN made comparable; timings and worker names may differ)."""
    def num(v: float) -> float | str:
        return "nan" if isinstance(v, float) and math.isnan(v) else v

    objectives = result.objectives
    return (result.status, None if objectives is None else {k: num(v) for k, v in objectives.items()},
            json.dumps(result.item_scores, sort_keys=True), result.error)


def reference(worker_spec: WorkerSpec, jobs: list[Job]) -> dict[int, tuple]:
    """The outcomes of one worker evaluating ``jobs`` in this process, no backend in between."""
    worker = CandidateWorker(worker_spec)
    return {j.index: comparable(worker.evaluate(j.index, j.attempt, j.recipe_json, j.seed, j.deadline_s))
            for j in jobs}


def drain(backend, jobs: list[Job]) -> list[Outcome]:  # type: ignore[no-untyped-def]
    """Submit ``jobs`` as slots free up and poll until each has come back once. No wall-clock
    limit of its own: a start of any length is waited for, bounded by the pytest timeout."""
    todo, out = list(jobs), []
    while len(out) < len(jobs):
        while todo and backend.free_slots() > 0:
            job = todo.pop(0)
            backend.submit(job)
            assert backend.running()[job.index][0] == job
        out.extend(backend.poll(1.0))
    return out


@pytest.fixture(params=["local", pytest.param("ray", marks=pytest.mark.ray)])
def make_backend(request) -> Iterator[Callable[..., Any]]:  # type: ignore[no-untyped-def]
    """``make_backend(spec, slots)`` for the backend under test; every one made is shut down."""
    made = []

    def make(worker_spec: WorkerSpec, slots: int = 2):  # type: ignore[no-untyped-def]
        if request.param == "local":
            backend = LocalBackend(worker_spec)
        else:
            request.getfixturevalue("ray_local")
            from evomerge.runner.ray_backend import RayBackend

            backend = RayBackend(worker_spec, slots, log=quiet)
        made.append(backend)
        return backend

    make.kind = request.param  # type: ignore[attr-defined]
    yield make
    for backend in made:
        backend.shutdown()


def test_backends_return_the_workers_outcomes_for_the_same_jobs(make_backend, zoo_dir: Path) -> None:
    jobs = make_jobs(zoo_dir)
    expected = reference(spec(zoo_dir), jobs)
    assert [s[0] for s in expected.values()] == ["COMPLETE"] * 5 + ["FAILED"]  # the jobs cover these statuses
    assert expected[3][1] == {"zoo_add": "nan", "zoo_caesar": "nan"}  # and a NaN objective
    assert len({expected[i][2] for i in range(5)}) > 1  # and different item scores
    backend = make_backend(spec(zoo_dir))
    outcomes = drain(backend, jobs)
    assert sorted(o.job.index for o in outcomes) == [j.index for j in jobs]  # each job back exactly once
    for o in outcomes:
        assert o.job == jobs[o.job.index] and o.result is not None and o.error is None
        assert comparable(o.result) == expected[o.job.index], o.job.index
        assert o.result.worker  # the process that ran it
    assert backend.running() == {}


def test_a_killed_job_never_comes_back_and_its_slot_does(make_backend, zoo_dir: Path) -> None:
    """``kill`` (a hard deadline passed) drops the job; the slot serves the next job (on Ray a
    fresh actor replaces the killed one, so one slot is enough to show it)."""
    jobs = make_jobs(zoo_dir)
    stuck, after = jobs[0], jobs[2]
    backend = make_backend(spec(zoo_dir, sleep_on={"0": 3600}), slots=1)
    while backend.free_slots() == 0:  # a Ray worker gets jobs only once it answered ready()
        assert backend.poll(1.0) == []
    backend.submit(stuck)
    assert set(backend.running()) == {stuck.index}
    backend.kill(stuck.index)
    assert backend.running() == {}
    outcomes = drain(backend, [after])
    assert [o.job for o in outcomes] == [after]
    assert comparable(outcomes[0].result) == reference(spec(zoo_dir), [after])[after.index]


@pytest.mark.ray
def test_a_lost_ray_worker_is_an_outcome_without_result_and_the_retry_is_the_workers(zoo_dir: Path,
                                                                                     ray_local) -> None:
    from evomerge.runner.ray_backend import RayBackend

    jobs = make_jobs(zoo_dir)
    expected = reference(spec(zoo_dir), jobs)
    backend = RayBackend(spec(zoo_dir, crash_on=[2]), 2, log=quiet)  # job 2's first attempt kills its process
    try:
        outcomes = {o.job.index: o for o in drain(backend, jobs)}
        assert sorted(outcomes) == [j.index for j in jobs]
        lost = outcomes.pop(2)
        assert lost.job == jobs[2] and lost.result is None and lost.error and lost.error.startswith("worker lost")
        for i, o in outcomes.items():  # the other jobs are untouched
            assert o.result is not None and comparable(o.result) == expected[i]
        retry = Job(2, 2, jobs[2].recipe_json, jobs[2].seed, None)  # the fault hits first attempts only
        [again] = drain(backend, [retry])  # on the replacement actor or the surviving one
        assert again.job == retry and again.result is not None and comparable(again.result) == expected[2]
        assert backend.running() == {}
    finally:
        backend.shutdown()
