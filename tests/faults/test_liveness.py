"""Liveness of the service (issue 19): slow worker starts never count as silence, workers that die
or fail while starting charge no candidate, SIGTERM stops a run cleanly, impossible worker counts
and unreachable Ray addresses fail at once, and workers refuse code that is not the driver's.

Every wait here is sized from what the test injects (start-up delays, graces), never from how
fast a quiet machine is."""

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
from evomerge.errors import ConfigError, EvomergeError
from tests.conftest import REPO
from tests.service.helpers import archive, write_space

pytestmark = pytest.mark.faults


def quiet(_m: str) -> None:
    pass


def _attempts(db: str, run: str) -> list[tuple[int, str, int]]:
    from evomerge.store import Store

    with Store.open(db) as store:
        info = store.get_run(run)
        return [(r.index, r.status, r.attempts) for r in store.candidates(info.id)]


@pytest.mark.ray
def test_slow_worker_starts_finish_every_candidate_once(tiny_sources: Path, tmp_path: Path, ray_local,
                                                        monkeypatch) -> None:
    """Each worker takes four grace periods to start (a GPU engine on a large model takes minutes):
    no candidate is requeued as silent, none is tried twice, the run completes."""
    grace = 5.0
    monkeypatch.setenv("EVOMERGE_FAULTS", json.dumps({"startup_delay_s": 4 * grace}))
    space = write_space(tmp_path, tiny_sources, strategy="random", budget=8)
    db = f"sqlite:///{tmp_path / 'a.db'}"
    logs: list[str] = []
    out = api.search(space, db=db, engine="synthetic", backend="ray", workers=2, name="slow", log=logs.append,
                     grace_s=grace, heartbeat_s=0.5, engine_options={"seconds": 0.2})
    assert out.told == 8
    assert [(i, s, a) for i, s, a in _attempts(db, "slow")] == [(i, "COMPLETE", 1) for i in range(8)]
    assert not any("no heartbeat" in m or "worker lost" in m for m in logs), logs


@pytest.mark.ray
def test_workers_dying_while_starting_charge_no_candidate(tiny_sources: Path, tmp_path: Path, ray_local,
                                                          monkeypatch) -> None:
    """Workers whose process dies in start-up stop the run with the reason; every candidate is still
    PENDING with no attempt spent, and the resumed run ends as a clean run does."""
    monkeypatch.setenv("EVOMERGE_FAULTS", '{"startup_crash": true}')
    space = write_space(tmp_path, tiny_sources, strategy="random", budget=6)
    db = f"sqlite:///{tmp_path / 'a.db'}"
    with pytest.raises(EvomergeError, match="died in a row"):
        api.search(space, db=db, engine="synthetic", backend="ray", workers=2, name="dead", log=quiet)
    assert all(s == "PENDING" and a == 0 for _, s, a in _attempts(db, "dead"))
    monkeypatch.delenv("EVOMERGE_FAULTS")
    out = api.resume("dead", db=db, backend="ray", workers=2, log=quiet)
    assert out.told == 6
    assert _attempts(db, "dead") == [(i, "COMPLETE", 1) for i in range(6)]
    ref = api.search(space, db=db, engine="synthetic", backend="local", name="clean", log=quiet)
    assert ref.told == 6
    assert [r[1:] for r in archive(db, "dead")] == [r[1:] for r in archive(db, "clean")]


@pytest.mark.ray
def test_a_worker_with_other_code_than_the_driver_refuses_to_start(tiny_sources: Path, ray_local) -> None:
    from evomerge.runner.ray_backend import RayBackend
    from evomerge.runner.worker import WorkerSpec, code_fingerprint

    spec = WorkerSpec(engine="synthetic", tasks=(str(REPO / "fitness/zoo_add.yaml"),),
                      sources=(str(tiny_sources / "base"),), code="0" * 16)
    assert code_fingerprint() != spec.code
    backend = RayBackend(spec, 1, log=quiet)
    try:
        with pytest.raises(ConfigError, match="other evomerge code") as err:
            for _ in range(10_000):  # until the worker has answered ready(); bounded by the pytest timeout
                backend.poll(1.0)
        assert "same evomerge" in (err.value.hint or "")
    finally:
        backend.shutdown()


def test_zero_workers_is_refused_not_a_hang(tiny_sources: Path) -> None:
    from evomerge.runner.ray_backend import RayBackend
    from evomerge.runner.worker import WorkerSpec

    spec = WorkerSpec(engine="synthetic", tasks=(), sources=(str(tiny_sources / "base"),))
    with pytest.raises(ConfigError, match="at least one"):
        RayBackend(spec, 0, log=quiet)


def test_an_unreachable_ray_address_fails_at_once(tiny_sources: Path, tmp_path: Path) -> None:
    """Port 1 on loopback refuses connections: a one-line error naming the address, no hang (the
    subprocess timeout only bounds a regression; ray.init itself would retry for minutes)."""
    space = write_space(tmp_path, tiny_sources, strategy="random", budget=4)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    res = subprocess.run([sys.executable, "-m", "evomerge.cli", "search", "--space", str(space), "--db",
                          f"sqlite:///{tmp_path / 'a.db'}", "--engine", "synthetic", "--address", "127.0.0.1:1"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "no Ray cluster answers at 127.0.0.1:1" in res.stderr and "fix:" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "a.db").exists() or not api.runs(db=f"sqlite:///{tmp_path / 'a.db'}")  # no orphan run


def test_check_reachable_forms() -> None:
    from evomerge.runner.ray_backend import check_reachable

    for ok in ("auto", "local"):
        check_reachable(ok)
    with pytest.raises(ConfigError, match="no Ray cluster answers"):
        check_reachable("ray://127.0.0.1:1")
    with pytest.raises(ConfigError, match="no host:port"):
        check_reachable("ray://nohost")


def _search_process(space: Path, db: str, tmp_path: Path, *extra: str, faults: str | None = None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    env.pop("EVOMERGE_FAULTS", None)
    if faults:
        env["EVOMERGE_FAULTS"] = faults
    log = (tmp_path / "driver.log").open("w")  # a file, not a pipe nobody drains
    proc = subprocess.Popen([sys.executable, "-m", "evomerge.cli", "search", "--space", str(space), "--db", db,
                             "--engine", "synthetic", "--name", "term", *extra], cwd=tmp_path, env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    return proc, log


def _wait_for_complete(db: str, proc: subprocess.Popen, tmp_path: Path, n: int) -> None:
    while True:  # bounded by the pytest timeout; fails at once if the driver dies first
        assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        try:
            if sum(r[1] == "COMPLETE" for r in archive(db, "term")) >= n:
                return
        except Exception:  # noqa: BLE001 - the run row may not exist yet
            pass
        time.sleep(0.2)


def _ray_daemons() -> set[int]:
    import psutil

    out = set()
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if ("gcs_server" in (p.info["name"] or "") or "raylet" in (p.info["name"] or "")
                    or cmd.startswith("ray::CandidateWorker")) and p.status() != "zombie":
                out.add(p.info["pid"])
        except psutil.Error:
            continue
    return out


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_sigterm_stops_cleanly_and_the_run_resumes(tiny_sources: Path, tmp_path: Path, backend: str) -> None:
    """SIGTERM (Kubernetes, Slurm, `ray job stop`): exit 143 without a core dump, the run recorded
    as stopped with its lease released, no candidate left RUNNING, the Ray it started shut down;
    resume then completes every candidate exactly once."""
    from evomerge.store import Store

    space = write_space(tmp_path, tiny_sources, strategy="random", budget=400)
    db = f"sqlite:///{tmp_path / 'a.db'}"
    before = _ray_daemons()
    proc, log = _search_process(space, db, tmp_path, "--backend", backend, "--workers", "2",
                                faults=json.dumps({"sleep_on": {str(i): 0.05 for i in range(400)}}))
    try:
        _wait_for_complete(db, proc, tmp_path, 3)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    text = " ".join((tmp_path / "driver.log").read_text().split())  # rich wraps lines at 80 columns
    assert rc == 128 + signal.SIGTERM, text[-3000:]
    assert "SIGTERM" in text and "evomerge resume term" in text
    with Store.open(db) as store:
        info = store.get_run("term")
        assert info.status == "stopped"
        _, expires = store.lease_holder(info.id)
        assert expires is not None and expires < time.time()  # released: the next driver takes it at once
    rows = archive(db, "term")
    assert not any(r[1] == "RUNNING" for r in rows)
    assert any(r[1] == "PENDING" for r in rows) or len(rows) < 400
    if backend == "ray":  # the Ray this driver started (and its actors) is gone
        deadline = time.monotonic() + 60
        while (_ray_daemons() - before) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not (_ray_daemons() - before)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    env.pop("EVOMERGE_FAULTS", None)
    res = subprocess.run([sys.executable, "-m", "evomerge.cli", "resume", "term", "--db", db, "--backend", "local"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    after = archive(db, "term")
    assert [r[0] for r in after] == list(range(400)) and all(r[1] == "COMPLETE" for r in after)


@pytest.mark.ray
def test_workers_run_the_drivers_code_not_a_copy_in_the_working_directory(tiny_sources: Path,
                                                                          tmp_path: Path) -> None:
    """Ray puts the driver's working directory first on its workers' path: a search started from a
    directory holding another `evomerge` (a checkout, an old copy) must still run the driver's code
    in its workers. Here that copy cannot even be imported, so a worker that took it dies."""
    space = write_space(tmp_path, tiny_sources, strategy="random", budget=4)
    checkout = tmp_path / "checkout"
    (checkout / "evomerge" / "runner").mkdir(parents=True)
    (checkout / "evomerge" / "__init__.py").write_text('raise ImportError("the copy in the working directory")\n')
    (checkout / "evomerge" / "runner" / "__init__.py").write_text("")
    launcher = tmp_path / "bin" / "run_evomerge.py"  # a console script: its directory, not cwd, leads sys.path
    launcher.parent.mkdir()
    launcher.write_text("from evomerge.cli import main\nmain()\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    env.pop("EVOMERGE_FAULTS", None)
    env.pop("RAY_ADDRESS", None)
    db = f"sqlite:///{tmp_path / 'a.db'}"
    res = subprocess.run([sys.executable, str(launcher), "search", "--space", str(space), "--db", db,
                          "--engine", "synthetic", "--workers", "1", "--name", "cwd"], cwd=checkout, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert [r[1] for r in archive(db, "cwd")] == ["COMPLETE"] * 4


NICENESS_PROBE = """
import os, sys
from evomerge.runner.ray_backend import RayBackend
from evomerge.runner.worker import WorkerSpec
backend = RayBackend(WorkerSpec(engine="synthetic", tasks=(), sources=(sys.argv[1],)), 1, log=lambda m: None)
import ray
print("driver", os.nice(0), "worker", ray.get(ray.remote(lambda: os.nice(0)).remote()), flush=True)
backend.shutdown()
"""


@pytest.mark.ray
def test_workers_run_at_the_drivers_cpu_priority(tiny_sources: Path, tmp_path: Path) -> None:
    """Ray starts its workers at nice 15, where any busy neighbour starves a search's evaluations
    (and their slow starts). The Ray a search starts runs them at the driver's own niceness: a
    driver started with ``nice -n 3`` gets workers at 3, not 15 and not 0."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    for k in ("RAY_ADDRESS", "RAY_worker_niceness", "EVOMERGE_FAULTS"):
        env.pop(k, None)
    res = subprocess.run([sys.executable, "-c", NICENESS_PROBE, str(tiny_sources / "base")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600, preexec_fn=lambda: os.nice(3))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    line = next(x for x in res.stdout.splitlines() if x.startswith("driver "))
    _, driver, _, worker = line.split()
    assert int(driver) == os.nice(0) + 3
    assert int(worker) == int(driver)


@pytest.mark.slow
def test_processes_that_need_the_zoo_at_once_build_it_once(tmp_path: Path) -> None:
    """The demo, searches and the tests share one zoo per machine: two processes asking for it at
    the same time build it once (the second waits on the first's lock), and both get it whole."""
    code = ("import sys; from evomerge.zoo import ZooSpec, ensure_zoo; "
            "ensure_zoo(sys.argv[1], ZooSpec(base_steps=2, expert_steps=2), log=lambda m: print('LOG', m))")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "zoo")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=1800)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("pretraining the base" in o for o in outs) == 1, outs
    manifest = json.loads((tmp_path / "zoo" / "zoo.json").read_text())
    assert all((tmp_path / "zoo" / m).is_dir() for m in ("base", "expert_add", "expert_caesar", "expert_length")), manifest
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
