"""Every strategy keeps the seam's contract: deterministic given its seed, bounded genomes,
failures become penalties, and state round-trips (rebuild by replay gives identical next asks,
also in a fresh process)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest

from evomerge.strategies.base import Evaluated, Replayable, ReplayMismatch
from evomerge.strategies.cmaes import CMAES
from evomerge.strategies.m2n2 import M2N2
from evomerge.strategies.nevergrad import Nevergrad
from evomerge.strategies.random import RandomSearch

DIM = 5
TARGET = np.array([0.9, 0.1, 0.7, 0.3, 0.5])

FACTORIES: dict[str, Callable[[int], Replayable]] = {
    "random": lambda seed: RandomSearch(DIM, np.full(DIM, 0.5), seed=seed),
    "cmaes": lambda seed: CMAES(DIM, np.full(DIM, 0.5), seed=seed, popsize=6, sigma=0.3),
    # IPOP with a short stall window: restarts happen within the contract's evaluations
    "cmaes_ipop": lambda seed: CMAES(DIM, np.full(DIM, 0.5), seed=seed, popsize=6, sigma=0.3, restarts="ipop",
                                     stall=1),
    "nevergrad": lambda seed: Nevergrad(DIM, np.full(DIM, 0.5), optimizer="TwoPointsDE", budget=80,
                                        num_workers=3, seed=seed),
    # a short stall window: fresh optimizers within the contract's evaluations, some between a batch's tells
    "nevergrad_stall": lambda seed: Nevergrad(DIM, np.full(DIM, 0.5), optimizer="TwoPointsDE", budget=80,
                                              num_workers=3, seed=seed, stall=3),
    "nevergrad_mo": lambda seed: Nevergrad(DIM, np.full(DIM, 0.5), optimizer="DE", budget=80, num_workers=3,
                                           seed=seed, multi_objective=True),
    "m2n2": lambda seed: M2N2(DIM, [np.eye(DIM)[i] for i in range(3)], archive_size=6, seed=seed),
}


def evaluate(g, fail: set[int]) -> Evaluated:
    if g.index in fail:
        return Evaluated(g, None)
    items = (np.abs(g.x - TARGET) < 0.25).astype(float)
    objectives = (float(1 - abs(g.x[0] - TARGET[0])), float(1 - abs(g.x[1] - TARGET[1])))
    return Evaluated(g, -float(np.sum((g.x - TARGET) ** 2)), {"t": items.tolist()}, objectives)


def drive(strategy: Replayable, evaluations: int, *, batch: int = 3, fail: frozenset[int] = frozenset({4})) -> list[np.ndarray]:
    """Ask in batches, tell in reverse order (out of order), until ``evaluations`` are told."""
    xs: list[np.ndarray] = []
    while len(strategy.told) < evaluations:
        gen = strategy.ask(batch)
        assert gen, "the strategy must have something to ask once earlier asks are told"
        xs += [g.x for g in gen]
        strategy.tell([evaluate(g, set(fail)) for g in reversed(gen)])
    return xs


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_deterministic_bounded_and_survives_failures(name: str) -> None:
    a, b = drive(FACTORIES[name](1), 30), drive(FACTORIES[name](1), 30)
    assert len(a) == len(b) and all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert all(np.all((x >= 0) & (x <= 1)) and np.all(np.isfinite(x)) for x in a)
    c = drive(FACTORIES[name](2), 30)
    assert any(not np.array_equal(p, q) for p, q in zip(a[1:], c[1:], strict=False)), "the seed must matter"


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_state_round_trips_through_json_and_arrays(name: str) -> None:
    s = FACTORIES[name](3)
    drive(s, 18)
    state = json.loads(json.dumps(s.state_dict()))  # JSON only
    arrays = {k: v.copy() for k, v in s.state_arrays().items()}
    rebuilt = type(s).from_state(state, arrays)
    assert rebuilt.state_dict() == s.state_dict()
    nxt, again = s.ask(3), rebuilt.ask(3)
    assert [g.index for g in nxt] == [g.index for g in again]
    assert all(np.array_equal(p.x, q.x) for p, q in zip(nxt, again, strict=True))


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_a_tampered_state_is_refused(name: str) -> None:
    s = FACTORIES[name](3)
    drive(s, 9)
    arrays = s.state_arrays()
    arrays["genomes"][2] += 0.01
    with pytest.raises(ReplayMismatch, match="candidate 2"):
        type(s).from_state(s.state_dict(), arrays)


CHILD = """
import json, sys
import numpy as np
from tests.contract.test_strategy_contract import FACTORIES, drive
name = sys.argv[1]
s = FACTORIES[name](5)
drive(s, 15)
np.savez(sys.argv[2], **s.state_arrays())
print(json.dumps({"state": s.state_dict(), "next": [g.x.tolist() for g in s.ask(3)]}))
"""


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_rebuild_in_a_fresh_process_gives_identical_next_asks(name: str, tmp_path) -> None:
    from tests.conftest import REPO

    npz = tmp_path / "arrays.npz"
    out = subprocess.run([sys.executable, "-c", CHILD, name, str(npz)], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True)
    child = json.loads(out.stdout.strip().splitlines()[-1])
    with np.load(npz, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    rebuilt = FACTORIES[name](5).from_state(child["state"], arrays)
    assert [g.x.tolist() for g in rebuilt.ask(3)] == child["next"]
