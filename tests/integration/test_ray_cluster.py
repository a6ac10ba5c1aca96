"""A real local Ray cluster (a head and a second node started with `ray start`) and a search
submitted as a batch job with `ray job submit`: the worker actors spread over both nodes and the
archive is complete. Also checks that the deploy/ manifests parse."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.service.helpers import write_space

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_deploy_manifests_parse() -> None:
    job = yaml.safe_load((REPO / "deploy" / "kuberay-rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and "evomerge search" in job["spec"]["entrypoint"]
    assert yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())["services"]["postgres"]["image"].startswith("postgres:")
    assert yaml.safe_load((REPO / "deploy" / "ray-cluster.yaml").read_text())["provider"]["type"] == "local"
    assert "torch==2.13.0" in (REPO / "deploy" / "Dockerfile").read_text()


def test_ray_job_submit_on_a_two_node_local_cluster(tiny_sources: Path, tmp_path: Path) -> None:
    port, dash = free_port(), free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    for k in [k for k in env if k.startswith("RAY_")]:  # settings an in-process Ray of earlier tests left behind
        env.pop(k)
    env["RAY_DEDUP_LOGS"] = "0"
    # a stale ~/.ray/auth_token from another Ray makes nodes refuse each other: own HOME, no token auth
    env["HOME"] = str(tmp_path / "home")
    env["RAY_AUTH_MODE"] = "disabled"
    (tmp_path / "home").mkdir()
    ray_bin = str(Path(sys.executable).parent / "ray")
    import tempfile

    tmp_ray = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # AF_UNIX socket paths must stay short

    def ray(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([ray_bin, *args], env=env, capture_output=True, text=True, timeout=timeout)

    head = ray("start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "1",
               "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
               "--object-store-memory", str(100 * 2**20), "--temp-dir", str(tmp_ray), "--disable-usage-stats")
    try:
        assert head.returncode == 0, head.stderr
        node = ray("start", "--address", f"127.0.0.1:{port}", "--num-cpus", "1",
                   "--object-store-memory", str(100 * 2**20))
        assert node.returncode == 0, node.stderr
        space = write_space(tmp_path, tiny_sources, strategy="random", budget=10)
        db = f"sqlite:///{tmp_path / 'cluster.db'}"
        job = ray("job", "submit", "--address", f"http://127.0.0.1:{dash}", "--",
                  sys.executable, "-m", "evomerge.cli", "search", "--space", str(space), "--db", db,
                  "--engine", "synthetic", "--workers", "2", "--name", "cluster", timeout=300)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout.lower()
        from evomerge.store import Store

        with Store.open(db) as store:
            rows = store.candidates(store.get_run("cluster").id)
        assert len(rows) == 10 and all(r.status == "COMPLETE" for r in rows)
        workers = {r.worker for r in rows}
        assert len(workers) == 2, f"one actor per node (1 CPU each): {workers}"
        nodes = json.loads(ray("list", "nodes", "--address", f"127.0.0.1:{port}", "--format", "json").stdout or "[]")
        assert len([n for n in nodes if n.get("state") == "ALIVE"]) == 2
    finally:
        stop_cluster(tmp_ray)


def stop_cluster(temp_dir: Path) -> None:
    """Kill this test's Ray processes only (`ray stop` would kill every Ray on the machine,
    including one the test process itself may be connected to)."""
    import psutil

    procs = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(str(temp_dir) in part for part in (p.info["cmdline"] or [])):
                procs.append(p)
        except psutil.Error:
            continue
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=20)
