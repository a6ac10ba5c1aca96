"""End to end on the zoo: `evomerge search` (Ray workers, transformers in place) killed with
SIGKILL halfway, resumed, then best / pareto / export; the exported model loads in transformers
and scores what the archive says; the resumed archive equals an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_search_kill_resume_query_export(zoo_dir: Path, tmp_path: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), EVOMERGE_ZOO=str(zoo_dir))
    env.pop("EVOMERGE_FAULTS", None)
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    space = str(REPO / "search_spaces" / "demo.yaml")
    common = ["--space", space, "--db", db, "--budget", "24", "--workers", "2"]

    def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "evomerge.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)

    log = (tmp_path / "e2e.log").open("w")  # a file, not an unread pipe that could fill and block the driver
    proc = subprocess.Popen([sys.executable, "-m", "evomerge.cli", "search", *common, "--name", "e2e"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    from evomerge.store import Store

    def done() -> int:
        try:
            with Store.open(db) as store:
                return store.get_run("e2e").counts.get("COMPLETE", 0)
        except Exception:  # noqa: BLE001 - not created yet
            return 0

    deadline = time.monotonic() + 300
    while done() < 12 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.3)
    assert proc.poll() is None, "the search finished before it could be killed: " + (tmp_path / "e2e.log").read_text()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    killed_at = done()
    assert 12 <= killed_at < 24

    res = cli("resume", "e2e", "--db", db, "--workers", "2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "finished, 24/24" in res.stdout.replace("\n", " ")

    ref = cli("search", *common, "--name", "ref")
    assert ref.returncode == 0, ref.stderr

    def rows(run: str) -> list[tuple]:
        with Store.open(db) as store:
            return [(r.index, r.status, r.recipe_id, r.objectives) for r in store.candidates(store.get_run(run).id)]

    assert rows("e2e") == rows("ref")
    assert all(r[1] == "COMPLETE" for r in rows("e2e"))

    best = json.loads(cli("best", "e2e", "--db", db, "--json", "-k", "3").stdout)
    assert len(best) == 3 and best[0]["fitness"] >= best[1]["fitness"] >= best[2]["fitness"]
    front = json.loads(cli("pareto", "e2e", "--db", db, "--json").stdout)
    assert best[0]["index"] in [f["index"] for f in front]
    out = tmp_path / "best-model"
    exp = cli("export", f"e2e:{best[0]['index']}", "--out", str(out), "--db", db)
    assert exp.returncode == 0, exp.stderr
    assert (out / "mergekit_config.yml").exists() and (out / "evomerge-manifest.json").exists()

    from evomerge.evaluate.hf import HFEngine
    from evomerge.evaluate.tasks import load_task, score_task
    from evomerge.hfmodel import load_hf_model, load_hf_tokenizer

    engine = HFEngine(load_hf_model(out), load_hf_tokenizer(out))
    for name, value in best[0]["objectives"].items():
        scores = score_task(load_task(REPO / "fitness" / f"{name}.yaml"), engine)
        assert sum(scores) / len(scores) == pytest.approx(value, abs=1e-9)
    plot = cli("plot", "e2e", "--db", db, "--out", str(tmp_path / "p.png"))
    assert plot.returncode == 0 and (tmp_path / "p.png").stat().st_size > 10_000
