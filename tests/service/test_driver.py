"""The driver through the Python API: every candidate recorded once, deterministic whatever the
backend and worker count, cached duplicates, queries."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge import api
from tests.service.helpers import STRATEGIES, archive, write_space


def quiet(_m: str) -> None:
    pass


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_local_backend_records_every_candidate_exactly_once(tiny_sources: Path, tmp_path: Path, strategy: str) -> None:
    space = write_space(tmp_path, tiny_sources, strategy=strategy)
    db = f"sqlite:///{tmp_path / 'a.db'}"
    out = api.search(space, db=db, engine="synthetic", backend="local", name="one", log=quiet)
    assert out.told == 16 and out.run.status == "finished"
    rows = archive(db, "one")
    assert [r[0] for r in rows] == list(range(16))
    assert all(r[1] == "COMPLETE" for r in rows)
    best = api.best("one", db=db, k=3)
    finite = sorted((r[3] for r in rows if r[3] is not None), reverse=True)
    assert [b["fitness"] for b in best] == finite[:3] or best[0]["fitness"] == finite[0]
    front = api.pareto("one", db=db)
    assert best[0]["index"] in [f["index"] for f in front]
    # the same seed gives the same archive
    api.search(space, db=db, engine="synthetic", backend="local", name="two", log=quiet)
    assert [r[2:] for r in archive(db, "two")] == [r[2:] for r in rows]


@pytest.mark.ray
@pytest.mark.parametrize("strategy", ["m2n2", "nevergrad"])
def test_archive_does_not_depend_on_worker_count_or_timing(tiny_sources: Path, tmp_path: Path, strategy: str,
                                                          ray_local) -> None:
    """Steady-state strategies told in candidate order with a fixed lag: 1 local slot and 3 Ray
    actors (finishing in any order) give the same archive."""
    space = write_space(tmp_path, tiny_sources, strategy=strategy, budget=20)
    db = f"sqlite:///{tmp_path / 'a.db'}"
    api.search(space, db=db, engine="synthetic", backend="local", name="local", lag=6, log=quiet)
    api.search(space, db=db, engine="synthetic", backend="ray", workers=3, name="ray", lag=6, log=quiet,
               engine_options={"seconds": 0.05})
    a, b = archive(db, "local"), archive(db, "ray")
    assert [r[2:] for r in a] == [r[2:] for r in b]


def test_identical_recipes_are_evaluated_once(tiny_sources: Path, tmp_path: Path) -> None:
    # weights bounded to a single value: every genome decodes to the same recipe
    space = write_space(tmp_path, tiny_sources, strategy="random", budget=6)
    space.write_text(space.read_text().replace("{low: 0.0, high: 1.5, init: 1.0}", "{low: 1.0, high: 1.0000001, init: 1.0}"))
    db = f"sqlite:///{tmp_path / 'a.db'}"
    out = api.search(space, db=db, engine="synthetic", backend="local", name="dup", log=quiet)
    assert out.told == 6
    rows = [api.show(f"dup:{i}", db=db) for i in range(6)]
    assert len({r["recipe_id"] for r in rows}) == 1
    assert rows[0]["cached_from"] is None and all(r["cached_from"] == 0 for r in rows[1:])
    assert {r["fitness"] for r in rows} == {rows[0]["fitness"]}
    assert [b["index"] for b in api.best("dup", db=db, k=6)] == [0]  # copies never rank


def test_queries_and_candidate_references(tiny_sources: Path, tmp_path: Path) -> None:
    from evomerge.errors import ConfigError

    space = write_space(tmp_path, tiny_sources, strategy="m2n2", budget=14)
    db = f"sqlite:///{tmp_path / 'a.db'}"
    api.search(space, db=db, engine="synthetic", backend="local", name="q", log=quiet)
    runs = api.runs(db)
    assert [r["name"] for r in runs] == ["q"] and runs[0]["counts"].get("COMPLETE") == 14
    child = next(i for i in range(14) if api.show(f"q:{i}", db=db)["parents"])
    shown = api.show(f"q:{child}", db=db)
    assert shown["lineage"]["ancestors"] and {a["index"] for a in shown["lineage"]["ancestors"] if a["level"] == 1} == set(shown["parents"])
    assert len(shown["item_scores"]["zoo_add"]) == 200
    by_obj = api.best("q", objective="zoo_caesar", db=db, k=2)
    assert by_obj[0]["objectives"]["zoo_caesar"] >= by_obj[1]["objectives"]["zoo_caesar"]
    with pytest.raises(ConfigError, match="no objective 'nope'"):
        api.best("q", objective="nope", db=db)
    with pytest.raises(ConfigError, match="RUN:INDEX"):
        api.show("q-7", db=db)


def test_a_new_cmaes_run_restarts_ipop_and_a_run_from_before_restarts_goes_on_without(tiny_sources: Path,
                                                                                      tmp_path: Path) -> None:
    """Issue 21: the defaults (IPOP, a 12-generation stall window) are fixed in the run when it is
    created, and ``stall: 0`` (pycma's criteria only) is kept; a run stored before restarts existed
    (no ``restarts`` in its space) resumes with none, as it started."""
    from evomerge.runner.service import run_space
    from evomerge.store import Store

    space = write_space(tmp_path, tiny_sources, strategy="cmaes", budget=8)
    db = f"sqlite:///{tmp_path / 'a.db'}"
    api.search(space, db=db, engine="synthetic", backend="local", name="new", log=quiet)
    with Store.open(db) as store:
        config = store.get_run("new").config
    assert config["space"]["strategy"]["restarts"] == "ipop" and config["space"]["strategy"]["stall"] == 12
    assert run_space(config).strategy.restarts == "ipop" and run_space(config).strategy.stall_window() == 12
    old = {**config, "space": {**config["space"], "strategy": {
        k: v for k, v in config["space"]["strategy"].items() if k not in ("restarts", "stall")}}}
    assert run_space(old).strategy.restarts == "none"
    # a run from sessions 13-18 stored stall null: pycma's criteria only, as it started
    between = {**config, "space": {**config["space"], "strategy": {**config["space"]["strategy"], "stall": None}}}
    assert run_space(between).strategy.stall_window() is None
    off = write_space(tmp_path, tiny_sources, strategy="cmaes", budget=8, name="nostall")
    off.write_text(off.read_text().replace("{name: cmaes,", "{name: cmaes, stall: 0,", 1))
    api.search(off, db=db, engine="synthetic", backend="local", name="off", log=quiet)
    with Store.open(db) as store:
        stored_off = store.get_run("off").config
    assert stored_off["space"]["strategy"]["stall"] == 0 and run_space(stored_off).strategy.stall_window() is None


def test_a_new_nevergrad_run_stores_its_stall_window_and_a_multi_objective_one_none(tiny_sources: Path,
                                                                                  tmp_path: Path) -> None:
    """Issue 21: a new single-objective nevergrad run stores NEVERGRAD_STALL (its evaluations
    without a better best before a fresh optimizer), beside its space too (NEVERGRAD_STALL_KEY:
    runs created before stored a `stall` nevergrad never applied); a multi-objective one stores 0
    (no rule: it searches the front); both resume with what they stored. A run with a short
    window restarts within its budget, and its final snapshot rebuilds with those restarts."""
    from evomerge.runner.service import NEVERGRAD_STALL_KEY, run_space
    from evomerge.space.schema import NEVERGRAD_STALL
    from evomerge.store import Store
    from evomerge.strategies.nevergrad import Nevergrad

    db = f"sqlite:///{tmp_path / 'a.db'}"
    single = write_space(tmp_path, tiny_sources, strategy="nevergrad", budget=6)
    api.search(single, db=db, engine="synthetic", backend="local", name="single", log=quiet)
    multi = write_space(tmp_path, tiny_sources, strategy="nevergrad", budget=6, name="mo",
                        extra="multi_objective: true\n")
    api.search(multi, db=db, engine="synthetic", backend="local", name="multi", log=quiet)
    short = write_space(tmp_path, tiny_sources, strategy="nevergrad_stall", budget=24)
    api.search(short, db=db, engine="synthetic", backend="local", name="short", log=quiet)
    with Store.open(db) as store:
        one, many = store.get_run("single").config, store.get_run("multi").config
        info = store.get_run("short")
        snapshot = store.latest_snapshot(info.id)
    assert one["space"]["strategy"]["stall"] == NEVERGRAD_STALL == one[NEVERGRAD_STALL_KEY]
    assert one["space"]["strategy"]["restarts"] is None
    assert run_space(one).strategy.stall_window() == NEVERGRAD_STALL
    assert many["space"]["strategy"]["stall"] == 0 == many[NEVERGRAD_STALL_KEY]
    assert run_space(many).strategy.stall_window(multi_objective=True) is None
    assert info.config[NEVERGRAD_STALL_KEY] == 3 and snapshot is not None
    told, state, arrays = snapshot  # snapshots leave per-item scores to the archive; nevergrad does not read them
    state["told"] = {i: {**t, "tasks": []} for i, t in state["told"].items()}
    rebuilt = Nevergrad.from_state(state, arrays)
    assert told == 24 and rebuilt.stall == 3 and rebuilt.restarts >= 1


def test_ngopt_with_one_worker_runs_with_candidates_asked_ahead(tiny_sources: Path, tmp_path: Path) -> None:
    """The driver asks `lag` candidates ahead (2 with one worker). NGOpt built for one in flight
    picks a sequential optimizer (COBYLA) whose second outstanding ask blocks forever; a new run
    plans nevergrad for the larger of the workers and the lag, so it finishes. A sequential
    optimizer named outright is refused before the run exists, naming the lag."""
    from evomerge.errors import ConfigError
    from evomerge.store import Store

    db = f"sqlite:///{tmp_path / 'a.db'}"
    space = write_space(tmp_path, tiny_sources, strategy="nevergrad", budget=8)
    space.write_text(space.read_text().replace("optimizer: TwoPointsDE", "optimizer: NGOpt"))
    out = api.search(space, db=db, engine="synthetic", backend="local", name="ngopt", log=quiet)
    assert out.told == 8 and out.run.status == "finished"
    with Store.open(db) as store:
        config = store.get_run("ngopt").config
    assert config["lag"] == 2 and config["strategy_workers"] == 2
    space.write_text(space.read_text().replace("optimizer: NGOpt", "optimizer: Cobyla"))
    with pytest.raises(ConfigError, match="strategy nevergrad Cobyla cannot start") as err:
        api.search(space, db=db, engine="synthetic", backend="local", name="cobyla", log=quiet)
    assert "lag" in (err.value.hint or "")
    with Store.open(db) as store:
        assert [r.name for r in store.list_runs()] == ["ngopt"]


def test_a_new_m2n2_run_stores_the_papers_mechanics_and_mutation(tiny_sources: Path, tmp_path: Path) -> None:
    """Issue 21: a new M2N2 run fixes attraction, fill and mutation (M2N2_DEFAULTS) in its stored
    space when the space leaves them out, and keeps a value the space sets (mutation 0 included)."""
    from evomerge.runner.service import run_space
    from evomerge.space.schema import M2N2_DEFAULTS
    from evomerge.store import Store

    db = f"sqlite:///{tmp_path / 'a.db'}"
    space = write_space(tmp_path, tiny_sources, strategy="m2n2", budget=6)
    api.search(space, db=db, engine="synthetic", backend="local", name="new", log=quiet)
    text = space.read_text().replace("strategy: {name: m2n2", "strategy: {name: m2n2, mutation: 0.0")
    assert "mutation: 0.0" in text
    zero = tmp_path / "zero.yaml"
    zero.write_text(text)
    api.search(zero, db=db, engine="synthetic", backend="local", name="zero", log=quiet)
    with Store.open(db) as store:
        new, kept = store.get_run("new").config, store.get_run("zero").config
    assert {k: new["space"]["strategy"][k] for k in M2N2_DEFAULTS} == M2N2_DEFAULTS
    assert M2N2_DEFAULTS["mutation"] == 0.1 and kept["space"]["strategy"]["mutation"] == 0.0
    assert run_space(new).strategy.mutation == 0.1 and run_space(kept).strategy.mutation == 0.0
    # CMA-ES settings are not stored for another strategy; a run stored before session 19 (restarts
    # written for every strategy) still resumes
    assert new["space"]["strategy"]["restarts"] is None and new["space"]["strategy"]["stall"] is None
    before = {**new, "space": {**new["space"], "strategy": {**new["space"]["strategy"], "restarts": "ipop", "stall": None}}}
    assert run_space(before).strategy.restarts is None and run_space(before).strategy.m2n2_settings() == M2N2_DEFAULTS
