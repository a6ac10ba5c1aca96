"""Failure tests of docs/reliability.md on the archive: two drivers on one run (promise 4, SQLite
and PostgreSQL), many concurrent writers on PostgreSQL (4), an old schema (8)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from evomerge.errors import EvomergeError, LeaseHeldError, SchemaError, StaleLeaseError
from evomerge.result import EvalResult, Status
from evomerge.store import NewCandidate, Store
from tests.conftest import REPO
from tests.service.helpers import write_space

pytestmark = pytest.mark.faults
OBJ = [{"name": "a", "direction": "maximize", "weight": 1.0}]

TWO_DRIVERS = """
import sys, time
from evomerge.errors import LeaseHeldError
from evomerge.store import Store
store = Store.open(sys.argv[1])
run = store.get_run("shared")
try:
    store.acquire_lease(run.id, "driver-2", 30)
    print("ACQUIRED")
except LeaseHeldError as err:
    print("REFUSED", err.message)
"""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'a.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")


def test_two_drivers_second_refused_then_takeover_fences_the_first(url: str, tmp_path: Path) -> None:
    store = Store.open(url)
    run = store.create_run(name="shared", space_yaml="", space_hash="", config={}, seed=0, budget=4, objectives=OBJ)
    # a lease far longer than a process start on a busy machine; expired below by the test itself
    first = store.acquire_lease(run.id, "driver-1", ttl_s=600.0)
    store.add_candidates(first, [NewCandidate(0, 0, "{}", "r-0", [0.0])])
    # a second driver, in another process, is refused while the lease is valid
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", TWO_DRIVERS, url], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("REFUSED") and "driven by driver-1" in out.stdout, out.stderr
    # after expiry the second takes over; the first driver's writes are then refused
    first = store.renew_lease(first, -1.0)  # the lease ran out a second ago: no sleep to size
    out = subprocess.run([sys.executable, "-c", TWO_DRIVERS, url], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("ACQUIRED"), out.stdout + out.stderr
    for write in (lambda: store.claim(first, 0, "w"), lambda: store.renew_lease(first, 30),
                  lambda: store.add_candidates(first, [NewCandidate(1, 0, "{}", "r-1", [1.0])])):
        with pytest.raises(StaleLeaseError, match="taken over by driver-2"):
            write()
    assert [r.index for r in store.candidates(run.id)] == [0]  # nothing of the fenced driver landed
    with pytest.raises(LeaseHeldError):
        store.acquire_lease(run.id, "driver-1", 30)
    store.close()


@pytest.mark.postgres
def test_many_concurrent_writers_on_postgres_claim_each_candidate_once(pg_url: str) -> None:
    setup = Store.open(pg_url)
    run = setup.create_run(name="busy", space_yaml="", space_hash="", config={}, seed=0, budget=300, objectives=OBJ)
    lease = setup.acquire_lease(run.id, "driver", 300)
    setup.add_candidates(lease, [NewCandidate(i, 0, "{}", f"r-{i}", [float(i)]) for i in range(300)])
    claimed: dict[int, list[int]] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer(k: int) -> None:
        store = Store.open(pg_url)
        try:
            for i in range(300):  # every writer races for every candidate, in a different order
                j = (i * 7 + k * 37) % 300
                try:
                    attempt = store.claim(lease, j, f"w{k}")
                except EvomergeError as err:
                    if "not PENDING" not in err.message:
                        raise
                    continue
                with lock:
                    claimed.setdefault(j, []).append(k)
                store.heartbeat(run.id, j, attempt)
                done = EvalResult(status=Status.COMPLETE, objectives={"a": j / 300})
                assert store.complete(lease, j, attempt, done, fitness=j / 300)
                again = EvalResult(status=Status.COMPLETE, objectives={"a": 0.0})
                assert not store.complete(lease, j, attempt, again, fitness=0.0)
        except BaseException as err:  # noqa: BLE001 - surfaced below
            errors.append(err)
        finally:
            store.close()

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors[:3]
    assert sorted(claimed) == list(range(300)) and all(len(v) == 1 for v in claimed.values())
    rows = setup.candidates(run.id)
    assert all(r.status == "COMPLETE" and r.attempts == 1 and r.fitness == pytest.approx(r.index / 300) for r in rows)
    assert len({r.worker for r in rows}) > 1  # the writers really did interleave
    setup.close()


def test_old_schema_is_refused_until_db_upgrade_then_resume_works(tiny_sources: Path, tmp_path: Path) -> None:
    from evomerge.store.schema import make_engine

    db = f"sqlite:///{tmp_path / 'old.db'}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), EVOMERGE_CRASH_AT="result:9")

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess:
        e = dict(env, **extra)
        return subprocess.run([sys.executable, "-m", "evomerge.cli", *args], cwd=tmp_path, env=e,
                              capture_output=True, text=True, timeout=300)

    space = write_space(tmp_path, tiny_sources, strategy="cmaes", budget=16)
    crashed = cli("search", "--space", str(space), "--db", db, "--engine", "synthetic", "--backend", "local",
                  "--name", "old")
    assert crashed.returncode != 0
    # an archive left by an older evomerge: the schema one revision back
    engine = make_engine(db)
    from alembic import command

    from evomerge.store.schema import _alembic_config

    cfg = _alembic_config(db)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "r0001")
    engine.dispose()
    with pytest.raises(SchemaError, match="schema version r0001") as info:
        Store.open(db)
    assert "evomerge db upgrade" in str(info.value)
    env.pop("EVOMERGE_CRASH_AT")
    refused = cli("resume", "old", "--db", db, "--backend", "local")
    assert refused.returncode == 2 and "evomerge db upgrade" in refused.stderr
    up = cli("db", "upgrade", "--db", db)
    assert up.returncode == 0, up.stderr
    res = cli("resume", "old", "--db", db, "--backend", "local")
    assert res.returncode == 0, res.stdout + res.stderr
    with Store.open(db) as store:
        rows = store.candidates(store.get_run("old").id)
    assert len(rows) == 16 and all(r.status == "COMPLETE" for r in rows)


def test_tables_without_a_schema_version_are_refused(tmp_path: Path) -> None:
    import sqlite3

    p = tmp_path / "other.db"
    with sqlite3.connect(p) as c:
        c.execute("CREATE TABLE runs (id TEXT)")
    with pytest.raises(SchemaError, match="no evomerge schema version"):
        Store.open(f"sqlite:///{p}")
