"""Racing's test (evomerge/evaluate/racing.py): its error rate under the null, its power, its
item order and its bookkeeping, on simulated 0/1 item scores (no model: the scorer reads arrays)."""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.evaluate.racing import Race, gap_bound, item_order, looks, mean_interval, run_race


def race_of(ref: dict[str, np.ndarray], *, chunk: int = 20, error: float = 0.05, test: str = "hoeffding",
            seed: int = 0, weights: dict[str, float] | None = None) -> Race:
    return Race(reference=7, reference_scores={k: v.tolist() for k, v in ref.items()},
                weights=weights or dict.fromkeys(ref, 1.0), chunk=chunk, error=error, test=test, seed=seed)


def run(race: Race, cand: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
    names = list(cand)
    calls: list[tuple[int, list[int]]] = []

    def score(k: int, idx: np.ndarray) -> list[float]:
        calls.append((k, list(idx)))
        return cand[names[k]][idx].tolist()

    return run_race(race, names, [len(cand[n]) for n in names], score), calls


def paired_null(rng: np.random.Generator, n: int, p: float, agree: float) -> tuple[np.ndarray, np.ndarray]:
    """A reference and a candidate with the same number of solved items (the gap D is exactly 0):
    the candidate keeps a share ``agree`` of the reference's items and swaps the rest."""
    ref = (rng.random(n) < p).astype(float)
    cand = ref.copy()
    solved, unsolved = np.flatnonzero(ref == 1), np.flatnonzero(ref == 0)
    swap = int(min(len(solved), len(unsolved)) * (1 - agree))
    cand[rng.choice(solved, swap, replace=False)] = 0
    cand[rng.choice(unsolved, swap, replace=False)] = 1
    return ref, cand


@pytest.mark.parametrize("test", ["hoeffding", "t"])
def test_a_candidate_that_reaches_the_reference_is_rarely_raced_out(test: str) -> None:
    """Under the null (D = 0 exactly) the share raced out stays at most ``error`` (the item order
    is the randomness: one seed per trial)."""
    error, trials, wrong = 0.1, 400, 0
    rng = np.random.default_rng(1)
    for trial in range(trials):
        ra, ca = paired_null(rng, 300, 0.6, agree=0.7)
        rb, cb = paired_null(rng, 200, 0.4, agree=0.8)
        out, _ = run(race_of({"a": ra, "b": rb}, error=error, test=test, seed=trial), {"a": ca, "b": cb})
        wrong += out.raced_out
    # the t test is asymptotic: allow its rate a binomial margin over the level, never more
    assert wrong / trials <= error + 3 * np.sqrt(error * (1 - error) / trials), wrong


@pytest.mark.parametrize("test", ["hoeffding", "t"])
def test_a_clearly_worse_candidate_stops_early_and_says_why(test: str) -> None:
    rng = np.random.default_rng(2)
    ref = {"a": (rng.random(400) < 0.8).astype(float), "b": (rng.random(400) < 0.7).astype(float)}
    cand = {"a": (rng.random(400) < 0.2).astype(float), "b": (rng.random(400) < 0.1).astype(float)}
    out, calls = run(race_of(ref, test=test), cand)
    assert out.raced_out and out.scored < 800 // 2
    assert out.scored == sum(len(idx) for _, idx in calls)
    assert "raced out after" in out.stop_reason and "candidate 7" in out.stop_reason
    for name, scores in out.item_scores.items():
        s = np.asarray(scores)
        seen = ~np.isnan(s)
        assert np.array_equal(s[seen], cand[name][seen])  # the scored items carry their real scores
        lo, hi = out.intervals[name]
        assert lo <= np.nanmean(s) <= hi


def test_a_better_candidate_is_scored_on_every_item_in_the_runs_order() -> None:
    rng = np.random.default_rng(3)
    ref = {"a": (rng.random(250) < 0.5).astype(float)}
    cand = {"a": np.ones(250)}
    out, calls = run(race_of(ref, chunk=30), cand)
    assert not out.raced_out and out.scored == 250 and out.stop_reason is None and out.intervals == {}
    assert out.item_scores == {"a": [1.0] * 250}
    assert len(calls) == looks([250], 30) == 9
    order = np.concatenate([idx for _, idx in calls])
    assert np.array_equal(order, item_order("a", 250, 0))  # the seeded order, each item once
    assert not np.array_equal(item_order("a", 250, 0), item_order("a", 250, 1))
    assert not np.array_equal(item_order("a", 250, 0), item_order("b", 250, 0))


def test_minimized_objectives_race_the_other_way() -> None:
    """A task with a negative weight (direction minimize): a candidate that scores *more* there is worse."""
    rng = np.random.default_rng(4)
    ref = {"err": (rng.random(400) < 0.1).astype(float)}
    cand = {"err": (rng.random(400) < 0.9).astype(float)}
    out, _ = run(race_of(ref, weights={"err": -1.0}), cand)
    assert out.raced_out
    out, _ = run(race_of(ref, weights={"err": 1.0}), cand)
    assert not out.raced_out


def test_the_bounds_are_exact_on_a_whole_population_and_shrink_with_items() -> None:
    d = np.array([-1.0, 0.0, 0.0, -1.0])
    assert gap_bound({"t": d}, {"t": 4}, {"t": 1.0}, level=0.01, test="hoeffding") == (-0.5, -0.5)
    assert mean_interval(np.array([1.0, 0.0]), 2, level=0.01, test="t") == (0.5, 0.5)
    widths = []
    for n in (20, 80, 160):
        est, up = gap_bound({"t": np.zeros(n)}, {"t": 200}, {"t": 1.0}, level=0.01, test="hoeffding")
        widths.append(up - est)
    assert widths[0] > widths[1] > widths[2] > 0


def test_a_reference_without_scores_for_every_item_is_refused() -> None:
    race = race_of({"a": np.ones(10)})
    with pytest.raises(ValueError, match="no scores for all 12 items"):
        run_race(race, ["a"], [12], lambda k, idx: [1.0] * len(idx))
