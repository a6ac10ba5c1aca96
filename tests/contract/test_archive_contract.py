"""The archive's contract, on every backend (a SQLite file and a real PostgreSQL server)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from evomerge.errors import ConfigError, EvomergeError, LeaseHeldError, StaleLeaseError
from evomerge.result import EvalResult, Status
from evomerge.store import NewCandidate, Store

OBJ = [{"name": "a", "direction": "maximize", "weight": 1.0}, {"name": "b", "direction": "minimize", "weight": 1.0}]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'a.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = Store.open(url)
    yield s
    s.close()


def new_run(store: Store, name: str = "r1", budget: int = 10):
    run = store.create_run(name=name, space_yaml="name: x\n", space_hash="h", config={"k": [1, 2]}, seed=3,
                           budget=budget, objectives=OBJ)
    return run, store.acquire_lease(run.id, "me", 30)


def cand(i: int, recipe: str = "") -> NewCandidate:
    return NewCandidate(i, i // 4, '{"merge_method":"linear"}', f"r-{recipe or i}", [0.1 * i, 0.5], (max(0, i - 1),))


def ok(a: float, b: float, scores: list[float] | None = None, worker: str | None = None) -> dict[str, Any]:
    """``store.complete`` keywords for a COMPLETE result with objectives a and b (fitness a - b)."""
    return {"result": EvalResult(status=Status.COMPLETE, objectives={"a": a, "b": b},
                                 item_scores={"t": scores or [1.0, 0.0, 0.5]}, seconds=0.25, tokens=7, worker=worker),
            "fitness": a - b}


def test_runs_are_created_found_and_listed(store: Store) -> None:
    run, _ = new_run(store)
    assert run.id.startswith("run-") and run.status == "created" and run.config == {"k": [1, 2]}
    assert store.get_run("r1").id == run.id == store.get_run(run.id).id
    with pytest.raises(ConfigError, match="already exists"):
        new_run(store)
    with pytest.raises(ConfigError, match="no run 'nope'"):
        store.get_run("nope")
    assert [r.name for r in store.list_runs()] == ["r1"]


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "x" * 65, "a b", "..", "run;drop"])
def test_run_names_that_could_traverse_or_inject_are_refused(store: Store, bad: str) -> None:
    with pytest.raises(ConfigError, match="run name"):
        store.create_run(name=bad, space_yaml="", space_hash="", config={}, seed=0, budget=1, objectives=OBJ)


def test_candidate_lifecycle_and_exactly_once_completion(store: Store) -> None:
    run, lease = new_run(store)
    store.add_candidates(lease, [cand(0), cand(1), cand(2)])
    store.add_candidates(lease, [cand(1)])  # identical re-add: no-op
    with pytest.raises(EvomergeError, match="exists with another recipe"):
        store.add_candidates(lease, [NewCandidate(1, 0, "{}", "r-other", [9.0], ())])
    assert [r.status for r in store.candidates(run.id)] == ["PENDING"] * 3
    a = store.claim(lease, 0, "w1")
    assert a == 1
    with pytest.raises(EvomergeError, match="not PENDING"):
        store.claim(lease, 0, "w1")
    assert store.heartbeat(run.id, 0, 1) and not store.heartbeat(run.id, 0, 2)
    committed = store.complete(lease, 0, 1, **ok(0.8, 0.1, [1.0, 0.25, 0.1], worker="w1"))
    assert not store.complete(lease, 0, 1, **ok(0.9, 0.0))  # duplicate result: ignored
    row = store.candidate(run.id, 0)
    assert committed == row  # the row as committed is the row read back (item scores at their stored precision)
    assert row.status == "COMPLETE" and row.fitness == pytest.approx(0.7) and row.objectives == {"a": 0.8, "b": 0.1}
    assert row.item_scores == {"t": [1.0, 0.25, float(np.float32(0.1))]} and row.tokens == 7 and row.worker == "w1" and row.parents == (0,)
    assert not store.heartbeat(run.id, 0, 1)  # finished: nothing to keep alive
    # a lost worker: retried, then FAILED at the cap
    store.claim(lease, 1, "w2")
    assert store.fail_attempt(lease, 1, 1, "worker lost", max_attempts=2).status == "PENDING"
    assert store.fail_attempt(lease, 1, 1, "worker lost", max_attempts=2) is None  # no longer RUNNING: unchanged
    assert store.claim(lease, 1, "w3") == 2
    assert not store.complete(lease, 1, 1, **ok(0.1, 0.1))  # the first attempt's late result is refused
    assert store.fail_attempt(lease, 1, 2, "worker lost", max_attempts=2) == store.candidate(run.id, 1)
    assert store.candidate(run.id, 1).status == "FAILED"
    assert store.candidate(run.id, 1).status == "FAILED" and store.candidate(run.id, 1).attempts == 2
    # requeue: stale heartbeats and a resume
    store.claim(lease, 2, "w4")
    assert store.requeue_stale(lease, 3600) == [] and store.requeue_stale(lease, -1) == [2]
    store.claim(lease, 2, "w5")
    assert store.requeue_running(lease) == [2]
    assert store.get_run(run.id).counts == {"COMPLETE": 1, "FAILED": 1, "PENDING": 1}


def test_non_finite_results_are_invalid_with_nulls(store: Store) -> None:
    run, lease = new_run(store)
    store.add_candidates(lease, [cand(i) for i in range(4)])
    for i in range(4):
        store.claim(lease, i, "w")
    done = Status.COMPLETE
    store.complete(lease, 0, 1, EvalResult(status=done, objectives={"a": math.nan, "b": 0.0}, item_scores={"t": [0.0]},
                                           seconds=1.0), fitness=math.nan)
    store.complete(lease, 1, 1, EvalResult(status=done, objectives={"a": 1.0, "b": math.inf}, seconds=1.0), fitness=1.0)
    store.complete(lease, 2, 1, EvalResult(status=done, objectives={"a": 0.2, "b": 0.3}, seconds=1.0), fitness=None)
    store.complete(lease, 3, 1, EvalResult(status=Status.TIMEOUT, seconds=9.0, error="deadline"), fitness=None)
    rows = store.candidates(run.id)
    assert [r.status for r in rows] == ["INVALID", "INVALID", "INVALID", "TIMEOUT"]
    assert all(r.fitness is None and r.objectives is None for r in rows)
    assert store.best(run.id) == [] and store.pareto(run.id) == []


def test_best_by_fitness_or_objective_and_the_pareto_front(store: Store) -> None:
    run, lease = new_run(store)
    pts = [(0.9, 0.6), (0.5, 0.1), (0.4, 0.4), (0.95, 0.9), (0.1, 0.0)]
    store.add_candidates(lease, [cand(i) for i in range(len(pts))] + [cand(9, recipe="0")])
    for i, (a, b) in enumerate(pts):
        store.claim(lease, i, "w")
        store.complete(lease, i, 1, **ok(a, b))
    assert store.complete_cached(lease, 9, 0) == store.candidate(run.id, 9)
    assert store.candidate(run.id, 9).cached_from == 0
    assert store.candidate(run.id, 9).objectives == {"a": 0.9, "b": 0.6}
    assert [r.index for r in store.best(run.id, k=3)] == [1, 0, 4]  # fitness a - b; copies never rank
    assert [r.index for r in store.best(run.id, objective="a", k=2)] == [3, 0]
    assert [r.index for r in store.best(run.id, objective="b", k=2)] == [4, 1]  # minimized
    front = [r.index for r in store.pareto(run.id)]
    assert front == [0, 1, 3, 4]  # (0.4, 0.4) is dominated by (0.5, 0.1); the cached copy is not a new point
    assert all(r.objectives for r in store.best(run.id, k=5))


def test_snapshots_round_trip_exactly_and_old_ones_are_pruned(store: Store) -> None:
    run, lease = new_run(store)
    assert store.latest_snapshot(run.id) is None
    arrays = {"x.0": np.array([0.1, 1 / 3]), "items.0.t": np.arange(5, dtype=np.float64)}
    for told in range(1, 6):
        store.save_snapshot(lease, told, {"name": "cmaes", "events": [["ask", 1, [0]]], "told": told}, arrays)
    told, state, got = store.latest_snapshot(run.id)
    assert told == 5 and state["told"] == 5 and state["events"] == [["ask", 1, [0]]]
    assert set(got) == set(arrays) and all(np.array_equal(got[k], arrays[k]) for k in arrays)


def test_leases_fence_every_write(store: Store) -> None:
    run, lease = new_run(store)
    with pytest.raises(LeaseHeldError, match="driven by me"):
        store.acquire_lease(run.id, "other", 30)
    again = store.acquire_lease(run.id, "me", 30)  # the same owner re-acquires (a restarted driver)
    assert again.epoch == lease.epoch + 1
    with pytest.raises(StaleLeaseError):
        store.add_candidates(lease, [cand(0)])  # the older epoch is fenced off
    store.add_candidates(again, [cand(0)])
    taken = store.acquire_lease(run.id, "other", 30, force=True)
    for write in (lambda: store.claim(again, 0, "w"), lambda: store.renew_lease(again, 30),
                  lambda: store.set_run_status(again, "x"), lambda: store.save_snapshot(again, 1, {}, {})):
        with pytest.raises(StaleLeaseError, match="taken over by other"):
            write()
    store.release_lease(taken)
    store.acquire_lease(run.id, "third", 30)  # released: free for anyone
