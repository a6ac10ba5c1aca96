"""Helpers for the service tests: a search space over tiny real checkpoints (tests/conftest.py
``tiny_sources``), scored by the synthetic evaluator (the point is the plumbing)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import REPO

STRATEGIES = {
    "cmaes": "{name: cmaes, popsize: 4, sigma: 0.3}",
    "random": "{name: random}",
    "m2n2": "{name: m2n2, archive_size: 5}",
    "nevergrad": "{name: nevergrad, optimizer: TwoPointsDE}",
    # a short stall window: fresh optimizers within a test's budget (evaluations without a better best)
    "nevergrad_stall": "{name: nevergrad, optimizer: TwoPointsDE, stall: 3}",
}


def write_space(tmp: Path, sources: Path, *, strategy: str = "cmaes", budget: int = 16, seed: int = 0,
                name: str = "svc", extra: str = "") -> Path:
    """``extra``: more top-level YAML (e.g. a ``fitness:`` block)."""
    p = tmp / f"{name}-{strategy}.yaml"
    p.write_text(
        f"name: {name}\nkind: ps\nbase: {sources / 'base'}\nexperts: [{sources / 'a'}, {sources / 'b'}]\n"
        "merge_method: task_arithmetic\nvary:\n  weight: {low: 0.0, high: 1.5, init: 1.0}\n"
        f"objectives:\n  - {{task: {REPO / 'fitness/zoo_add.yaml'}}}\n  - {{task: {REPO / 'fitness/zoo_caesar.yaml'}}}\n"
        f"strategy: {STRATEGIES[strategy]}\nbudget: {budget}\nseed: {seed}\n{extra}")
    return p


def archive(db: str, run: str) -> list[tuple]:
    """(index, status, recipe_id, fitness, objectives, fidelity, items scored, race reference) of
    every candidate, in order."""
    from evomerge.store import Store

    with Store.open(db) as store:
        info = store.get_run(run)
        return [(r.index, r.status, r.recipe_id, r.fitness, r.objectives, r.fidelity, r.items_scored, r.race_ref)
                for r in store.candidates(info.id)]
