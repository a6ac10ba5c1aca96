"""Failure tests of docs/reliability.md at the service level: worker death (promise 2), driver
SIGKILL at each crash point then resume (1, 3), a silent worker (2), NaN fitness for every
strategy (9), the hard deadline (2), two drivers on one run (4), workers that cannot start (10)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evomerge import api
from tests.conftest import REPO
from tests.service.helpers import STRATEGIES, archive, write_space

pytestmark = pytest.mark.faults


def quiet(_m: str) -> None:
    pass


def cli(*args: str, cwd: Path, env_extra: dict[str, str] | None = None, timeout: float = 300):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), **(env_extra or {}))
    env.pop("EVOMERGE_FAULTS", None) if not env_extra or "EVOMERGE_FAULTS" not in env_extra else None
    return subprocess.run([sys.executable, "-m", "evomerge.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


RACING = "fitness: {racing: {chunk: 20, test: t, reference: 2}}\n"  # races from the third told candidate on
SUBSET = "fitness: {subset: {method: irt, size: 15, warmup: 4, refit: 3, promote: 2}}\n"  # estimates from the 5th on


@pytest.mark.parametrize("point", ["pending:5", "dispatch:5", "result:5", "snapshot:10"])
@pytest.mark.parametrize(("strategy", "racing"), [("cmaes", ""), ("m2n2", ""), ("cmaes", RACING), ("m2n2", RACING),
                                                 ("cmaes", SUBSET), ("nevergrad_stall", "")],
                         ids=["cmaes", "m2n2", "cmaes-racing", "m2n2-racing", "cmaes-subset", "nevergrad-stall"])
def test_driver_sigkill_then_resume_equals_an_uninterrupted_run(tiny_sources: Path, tmp_path: Path, point: str,
                                                                strategy: str, racing: str) -> None:
    """With racing or subsets, the references, the estimators (fitted on committed results) and
    the estimates replay exactly too."""
    space = write_space(tmp_path, tiny_sources, strategy=strategy, budget=16, extra=racing)
    db = f"sqlite:///{tmp_path / 'a.db'}"
    common = ["--space", str(space), "--db", db, "--engine", "synthetic", "--backend", "local", "--snapshot-every", "5"]
    ref = cli("search", *common, "--name", "ref", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr
    crashed = cli("search", *common, "--name", "crash", cwd=tmp_path, env_extra={"EVOMERGE_CRASH_AT": point})
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    before = archive(db, "crash")
    assert len([r for r in before if r[1] == "COMPLETE"]) < 16
    # the dead driver's lease is taken over at once: its process is gone on this host
    res = cli("resume", "crash", "--db", db, "--backend", "local", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "is gone; taking over its lease" in res.stdout and "resumed: replayed" in res.stdout
    assert "disagrees" not in res.stdout
    if point == "snapshot:10":  # the snapshot at 10 died with the driver; the one at 5 is checked
        assert "snapshot at 5 tells matches the replay" in " ".join(res.stdout.split())
    after = archive(db, "crash")
    assert [r[0] for r in after] == list(range(16)) and all(r[1] == "COMPLETE" for r in after)
    assert [r[2:] for r in after] == [r[2:] for r in archive(db, "ref")]
    if racing:  # the case is one: candidates raced against references (or estimated), some stopped early
        assert any(r[7] is not None for r in after)
        assert any(r[5] == ("raced" if racing == RACING else "subset") for r in after)


@pytest.mark.ray
def test_worker_killed_mid_evaluation_is_retried_and_recorded_once(tiny_sources: Path, tmp_path: Path,
                                                                   ray_local, monkeypatch) -> None:
    monkeypatch.setenv("EVOMERGE_FAULTS", '{"crash_on": [3, 7]}')
    space = write_space(tmp_path, tiny_sources, strategy="random", budget=12)
    db = f"sqlite:///{tmp_path / 'a.db'}"
    logs: list[str] = []
    out = api.search(space, db=db, engine="synthetic", backend="ray", workers=2, name="w", log=logs.append)
    assert out.told == 12
    for i in (3, 7):
        row = api.show(f"w:{i}", db=db)
        assert row["status"] == "COMPLETE" and row["attempts"] == 2
    assert sum("worker lost" in m for m in logs) == 2
    assert all(r[1] == "COMPLETE" for r in archive(db, "w"))


@pytest.mark.ray
def test_silent_worker_is_requeued_and_its_late_result_refused(tiny_sources: Path, tmp_path: Path,
                                                              ray_local, monkeypatch) -> None:
    from evomerge.result import EvalResult, Status
    from evomerge.store import Store

    # The grace is 20 heartbeats, so only the injected freeze (which never ends: the requeue kills
    # that worker) goes silent for a whole grace, not a heartbeat thread starved on a busy machine.
    grace, heartbeat = 10.0, 0.5
    monkeypatch.setenv("EVOMERGE_FAULTS", json.dumps({"freeze_on": [2], "freeze_s": 3600}))
    space = write_space(tmp_path, tiny_sources, strategy="random", budget=8)
    db = f"sqlite:///{tmp_path / 'a.db'}"
    logs: list[str] = []
    out = api.search(space, db=db, engine="synthetic", backend="ray", workers=2, name="hb", log=logs.append,
                     grace_s=grace, heartbeat_s=heartbeat, engine_options={"seconds": 0.5})
    assert out.told == 8
    row = api.show("hb:2", db=db)
    assert row["status"] == "COMPLETE" and row["attempts"] == 2
    assert any("no heartbeat" in m for m in logs)
    with Store.open(db) as store:  # a result from the first (silent) attempt arriving now is refused
        info = store.get_run("hb")
        lease = store.acquire_lease(info.id, "test", 30)
        late = EvalResult(status=Status.COMPLETE, objectives={"zoo_add": 1.0, "zoo_caesar": 1.0}, seconds=1.0)
        assert store.complete(lease, 2, 1, late, fitness=2.0) is None
        assert store.candidate(info.id, 2).fitness == row["fitness"]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_nan_fitness_is_invalid_null_and_ignored(tiny_sources: Path, tmp_path: Path, strategy: str,
                                                 monkeypatch) -> None:
    monkeypatch.setenv("EVOMERGE_FAULTS", '{"nan_on": [0, 1, 5]}')
    space = write_space(tmp_path, tiny_sources, strategy=strategy, budget=12)
    db = f"sqlite:///{tmp_path / 'a.db'}"
    out = api.search(space, db=db, engine="synthetic", backend="local", name="nan", log=quiet)
    assert out.told == 12
    for i in (0, 1, 5):
        row = api.show(f"nan:{i}", db=db)
        assert row["status"] == "INVALID" and row["fitness"] is None and row["objectives"] is None
    assert all(b["index"] not in (0, 1, 5) for b in api.best("nan", db=db, k=12))
    assert all(p["index"] not in (0, 1, 5) for p in api.pareto("nan", db=db))


@pytest.mark.ray
def test_hard_deadline_times_out_replaces_the_worker_and_leaks_nothing(tiny_sources: Path, tmp_path: Path,
                                                                        ray_local, monkeypatch) -> None:
    monkeypatch.setenv("EVOMERGE_FAULTS", '{"sleep_on": {"3": 60}}')
    space = write_space(tmp_path, tiny_sources, strategy="random", budget=6)
    db = f"sqlite:///{tmp_path / 'a.db'}"
    t0 = time.monotonic()
    out = api.search(space, db=db, engine="synthetic", backend="ray", workers=2, name="dl", log=quiet,
                     deadline_s=2.0, deadline_slack_s=1.0)
    assert out.told == 6 and time.monotonic() - t0 < 45
    row = api.show("dl:3", db=db)
    assert row["status"] == "TIMEOUT" and row["fitness"] is None and "deadline" in row["error"]
    assert row["seconds"] < 2.0 + 1.0 + 2.0  # deadline + slack + the driver's poll interval
    deadline = time.monotonic() + 20
    while _actor_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _actor_processes(), "the run's actors (including the replaced one) must be gone"


@pytest.mark.ray
def test_workers_that_cannot_start_stop_the_run_with_the_fix_and_it_resumes(tiny_sources: Path, tmp_path: Path,
                                                                            ray_local, monkeypatch) -> None:
    """A ConfigError raised while a Ray worker starts (a misspelt setting on its node) reaches the
    driver as that error, message and fix, on the first candidate: no candidate is burnt as
    "worker lost", the run is left stopped with its lease released, and resumes once fixed."""
    from evomerge.errors import ConfigError

    monkeypatch.setenv("EVOMERGE_FAULTS", '{"startup_error": "EVOMERGE_COMPILE=\'sometimes\' is not a compile mode"}')
    space = write_space(tmp_path, tiny_sources, strategy="random", budget=6)
    db = f"sqlite:///{tmp_path / 'a.db'}"
    logs: list[str] = []
    with pytest.raises(ConfigError, match="could not start: EVOMERGE_COMPILE='sometimes'") as err:
        api.search(space, db=db, engine="synthetic", backend="ray", workers=2, name="st", log=logs.append)
    assert "EVOMERGE_FAULTS" in (err.value.hint or "")
    assert not any("worker lost" in m for m in logs)
    assert any("evomerge resume st" in m for m in logs)
    assert not any(r[1] in ("COMPLETE", "FAILED") for r in archive(db, "st"))
    monkeypatch.delenv("EVOMERGE_FAULTS")
    out = api.resume("st", db=db, backend="ray", workers=2, log=quiet)
    assert out.told == 6 and all(r[1] == "COMPLETE" for r in archive(db, "st"))


def _actor_processes() -> list[int]:
    """PIDs of live Ray actor processes of evomerge's worker class (Ray titles them ray::WorkerShell,
    the class that carries a CandidateWorker: evomerge/runner/bootstrap.py)."""
    import psutil

    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = p.info["cmdline"] or [""]
            if cmd[0].startswith("ray::WorkerShell") and p.status() != "zombie":
                out.append(p.info["pid"])
        except psutil.Error:
            continue
    return out


def test_second_driver_on_a_run_is_refused(tiny_sources: Path, tmp_path: Path) -> None:
    space = write_space(tmp_path, tiny_sources, strategy="random", budget=100000)  # cannot finish first
    db = f"sqlite:///{tmp_path / 'a.db'}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    # output to a file, not a pipe nobody reads: a full pipe would block the first driver, its lease
    # would expire and the second driver would (rightly) take the run over
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen([sys.executable, "-m", "evomerge.cli", "search", "--space", str(space), "--db", db,
                              "--engine", "synthetic", "--backend", "local", "--name", "busy"], cwd=tmp_path, env=env,
                             stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                if any(r[1] == "COMPLETE" for r in archive(db, "busy")):
                    break
            except Exception:  # noqa: BLE001 - the run row may not exist yet
                continue
        second = cli("resume", "busy", "--db", db, "--backend", "local", cwd=tmp_path)
        assert second.returncode == 2
        assert "lease" in second.stderr and "fix:" in second.stderr
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-2000:]  # the holder still runs
    finally:
        first.kill()
        first.wait()
        log.close()


def test_a_snapshot_that_disagrees_with_the_archive_loses_to_the_replay(tiny_sources: Path, tmp_path: Path) -> None:
    from sqlalchemy import select, update

    from evomerge.store import Store
    from evomerge.store.models import Snapshot

    space = write_space(tmp_path, tiny_sources, strategy="m2n2", budget=16)
    db = f"sqlite:///{tmp_path / 'a.db'}"
    common = ["--space", str(space), "--db", db, "--engine", "synthetic", "--backend", "local", "--snapshot-every", "5"]
    assert cli("search", *common, "--name", "ref", cwd=tmp_path).returncode == 0
    crashed = cli("search", *common, "--name", "bad", cwd=tmp_path, env_extra={"EVOMERGE_CRASH_AT": "result:12"})
    assert crashed.returncode == -signal.SIGKILL
    with Store.open(db) as store:  # corrupt the snapshot: a told fitness that the archive does not hold
        run_id = store.get_run("bad").id
        with store.engine.begin() as conn:
            snap = conn.execute(select(Snapshot).where(Snapshot.run_id == run_id).order_by(Snapshot.seq.desc())).first()
            state = dict(snap.state)
            state["events"] = state["events"][:-2] + [["ask", 1, [99]]]
            conn.execute(update(Snapshot).where(Snapshot.run_id == run_id, Snapshot.seq == snap.seq).values(state=state))
    res = cli("resume", "bad", "--db", db, "--backend", "local", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    out = " ".join(res.stdout.split())
    assert "does not rebuild" in out or "disagrees with the replay" in out
    assert [r[2:] for r in archive(db, "bad")] == [r[2:] for r in archive(db, "ref")]
