"""Racing in a search (issue 16): fewer items for the same candidates and the same best, the
archive's fidelity columns, and the queries that filter and show them. Local backend, synthetic
evaluator over tiny real checkpoints (the point is the plumbing; tests/unit/test_racing.py tests
the statistics, the evaluator contract the engines)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from evomerge import api
from tests.conftest import run_cli
from tests.service.helpers import archive, write_space

RACING = "fitness: {racing: {chunk: 20, test: t, error: 0.05, reference: incumbent}}\n"
ITEMS = 400  # zoo_add and zoo_caesar dev splits, 200 items each


def quiet(_m: str) -> None:
    pass


def test_random_search_races_the_same_candidates_on_fewer_items_to_the_same_best(tiny_sources: Path,
                                                                                tmp_path: Path) -> None:
    """Random search asks the same genomes whatever it is told, so a raced run and a full run
    evaluate the same candidates: the raced one spends fewer items and finds the same best."""
    db = f"sqlite:///{tmp_path / 'a.db'}"
    full = write_space(tmp_path, tiny_sources, strategy="random", budget=30, name="full")
    raced = write_space(tmp_path, tiny_sources, strategy="random", budget=30, name="raced", extra=RACING)
    api.search(full, db=db, engine="synthetic", backend="local", name="full", log=quiet)
    api.search(raced, db=db, engine="synthetic", backend="local", name="raced", log=quiet)
    a, b = archive(db, "full"), archive(db, "raced")
    assert [r[2] for r in a] == [r[2] for r in b]  # the same recipes
    assert all(r[5] == "exact" and r[6] == ITEMS and r[7] is None for r in a)
    stopped = [r for r in b if r[5] == "raced"]
    assert stopped and sum(r[6] for r in b) < 0.7 * len(b) * ITEMS
    assert api.best("raced", db=db)[0]["recipe_id"] == api.best("full", db=db)[0]["recipe_id"]
    assert api.best("raced", db=db)[0]["fitness"] == api.best("full", db=db)[0]["fitness"]
    # a raced-out candidate: its estimate on the items it saw, which the full run's candidate beats
    # no worse than the reference (the test's claim, checked against the truth)
    truth = {r[0]: r[3] for r in a}
    for r in stopped:
        ref = r[7]
        assert truth[r[0]] < truth[ref], (r, truth[ref])
        d = api.show(f"raced:{r[0]}", db=db)
        scored = {t: [v for v in s if not math.isnan(v)] for t, s in d["item_scores"].items()}
        assert sum(map(len, scored.values())) == d["items_scored"] == r[6] < ITEMS
        assert all(len(s) == 200 for s in d["item_scores"].values())  # unscored items are NaN
        for task, (lo, hi) in d["intervals"].items():
            assert lo <= d["objectives"][task] == sum(scored[task]) / len(scored[task]) <= hi
        assert d["stop_reason"].startswith("raced out after") and f"candidate {ref}" in d["stop_reason"]
    assert all(r["fidelity"] == "exact" for r in api.best("raced", db=db, k=30, fidelity="exact"))
    assert len(api.best("raced", db=db, k=30, fidelity="raced")) == len(stopped)
    assert all(r["fidelity"] == "exact" for r in api.pareto("raced", db=db, fidelity="exact"))


def test_the_cli_shows_fidelity_and_filters_by_it(tiny_sources: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'a.db'}"
    space = write_space(tmp_path, tiny_sources, strategy="random", budget=20, name="cli", extra=RACING)
    api.search(space, db=db, engine="synthetic", backend="local", name="r", log=quiet)
    stopped = [r for r in archive(db, "r") if r[5] == "raced"]
    assert stopped
    table = run_cli("best", "r", "-k", "20", "--db", db, cwd=tmp_path)
    assert table.returncode == 0 and f"raced {stopped[0][6]}" in table.stdout and "exact" in table.stdout
    exact = run_cli("best", "r", "-k", "20", "--fidelity", "exact", "--db", db, cwd=tmp_path)
    assert exact.returncode == 0 and "raced" not in exact.stdout
    shown = run_cli("show", f"r:{stopped[0][0]}", "--db", db, cwd=tmp_path)
    assert shown.returncode == 0 and "raced out after" in " ".join(shown.stdout.split())
    from evomerge.plot import fitness_series
    from evomerge.store import Store

    with Store.open(db) as store:
        groups = fitness_series(store.candidates(store.get_run("r").id))
    assert sorted(r.index for r in groups["raced"]) == sorted(r[0] for r in stopped)
    assert groups["exact"] and all(r.fidelity == "exact" for r in groups["exact"]) and groups["failed"] == []
    plot = run_cli("plot", "r", "--db", db, "--out", str(tmp_path / "r.png"), cwd=tmp_path)
    assert plot.returncode == 0 and (tmp_path / "r.png").stat().st_size > 10_000
    bad = run_cli("pareto", "r", "--fidelity", "approximate", "--db", db, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --fidelity 'approximate' is not one of")
    assert "Traceback" not in bad.stderr


@pytest.mark.ray
def test_a_raced_search_on_ray_workers_archives_what_the_local_backend_does(tiny_sources: Path, tmp_path: Path,
                                                                            ray_local) -> None:
    """The race travels with the job to a Ray actor and back: the same references, the same
    raced-out candidates and estimates as in the driver's own process."""
    db = f"sqlite:///{tmp_path / 'a.db'}"
    space = write_space(tmp_path, tiny_sources, strategy="m2n2", budget=16, name="ray", extra=RACING)
    api.search(space, db=db, engine="synthetic", backend="local", name="local", lag=4, log=quiet)
    api.search(space, db=db, engine="synthetic", backend="ray", workers=2, name="ray", lag=4, log=quiet)
    local, ray = archive(db, "local"), archive(db, "ray")
    assert any(r[5] == "raced" for r in local)
    assert [r[2:] for r in ray] == [r[2:] for r in local]
