"""Full-set scores estimated from item subsets (issue 16, evomerge/evaluate/estimate.py): the
random, anchor and IRT estimators on simulated item-response data, and a subset evaluation's
promotion rule."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from evomerge.evaluate.estimate import Estimator, SubsetPlan, _sigmoid, ability, anchors, fit, run_subset
from evomerge.evaluate.racing import Race, item_order


def two_pl(m: int, n: int, seed: int) -> np.ndarray:
    """0/1 scores of m candidates on n items drawn from a 2PL model (varied abilities)."""
    rng = np.random.default_rng(seed)
    a, b = rng.lognormal(0, 0.5, n), rng.normal(0, 1.5, n)
    theta = rng.normal(0, 1, m)
    return (rng.random((m, n)) < _sigmoid(np.outer(theta, a) - b)).astype(float)


def test_the_random_subset_is_the_runs_item_order_and_its_mean() -> None:
    est = fit("random", "t", 300, 40, None, seed=5)
    assert est.items == tuple(int(i) for i in item_order("t", 300, 5)[:40])
    y = np.r_[np.ones(10), np.zeros(30)]
    assert est.estimate(y) == 0.25
    lo, hi = est.interval(y, level=0.025)
    assert lo < 0.25 < hi and hi - lo < 0.3
    whole = fit("random", "t", 40, 40, None, seed=5)
    assert whole.interval(y, level=0.025) == (0.25, 0.25)  # every item: exact


def test_anchors_weight_each_cluster_by_its_share_of_the_items() -> None:
    """Items in three groups of identical columns (30, 60, 10 items): one anchor per group,
    weighted 0.3, 0.6 and 0.1, and the anchor estimate is exact for these candidates."""
    rng = np.random.default_rng(0)
    cols = rng.random((8, 3)) < 0.5
    Y = np.repeat(cols, [30, 60, 10], axis=1).astype(float)
    items, weights = anchors(Y, 3, seed=1)
    assert sorted(weights) == pytest.approx([0.1, 0.3, 0.6])
    est = fit("anchor", "t", 100, 3, Y, seed=1)
    assert all(math.isclose(est.estimate(row[list(est.items)]), row.mean()) for row in Y)
    assert est.rmse == pytest.approx(0.0, abs=1e-12) and est.fitted_on == 8


def test_irt_estimates_beat_a_random_subset_of_the_same_size_on_new_candidates() -> None:
    Y = two_pl(160, 1000, seed=3)
    train, test = Y[:80], Y[80:]
    truth = test.mean(axis=1)
    errors = {}
    for method in ("random", "anchor", "irt"):
        est = fit(method, "t", 1000, 40, train, seed=0)
        pred = np.array([est.estimate(row[list(est.items)]) for row in test])
        errors[method] = float(np.mean(np.abs(pred - truth)))
        covered = np.mean([lo <= t <= hi for (lo, hi), t in
                           zip((est.interval(row[list(est.items)], level=0.025) for row in test), truth, strict=True)])
        assert covered >= 0.75, (method, covered)  # a 95% interval that mostly holds on new candidates
    assert errors["irt"] < errors["random"] and errors["irt"] < 0.05, errors


def test_ability_grows_with_the_items_answered() -> None:
    a, b = np.ones(10), np.linspace(-2, 2, 10)
    thetas = [ability(np.r_[np.ones(k), np.zeros(10 - k)], a, b) for k in range(11)]
    assert all(x < y for x, y in zip(thetas, thetas[1:], strict=False))
    assert all(math.isfinite(t) for t in thetas)  # all right / all wrong stay finite (the prior)


def plan(cut: float | None, front: tuple = ()) -> SubsetPlan:
    est = Estimator(method="random", total=10, items=(0, 1, 2, 3))
    return SubsetPlan(estimators={"t": est}, weights={"t": 1.0}, signs={"t": 1.0}, promote_above=cut, reference=3,
                      front=front)


def scorer(truth: list[float], seen: list[list[int]]):
    def score(k: int, idx: np.ndarray) -> list[float]:
        seen.append([int(i) for i in idx])
        return [truth[int(i)] for i in idx]
    return score


def test_a_subset_estimate_below_the_cut_stops_and_one_above_is_scored_on_every_item() -> None:
    truth = [1, 1, 0, 0, 1, 1, 1, 1, 1, 1.0]
    seen: list[list[int]] = []
    out = run_subset(plan(0.9), ["t"], [10], scorer(truth, seen))
    assert not out.promoted and out.scored == 4 and seen == [[0, 1, 2, 3]]
    assert out.objectives == {"t": 0.5} and all(math.isnan(v) for v in out.item_scores["t"][4:])
    assert out.stop_reason.startswith("estimated from 4 of 10 items") and "cut 0.9000 (candidate 3)" in out.stop_reason
    lo, hi = out.intervals["t"]
    assert lo < 0.5 < hi
    seen.clear()
    up = run_subset(plan(0.4), ["t"], [10], scorer(truth, seen))
    assert up.promoted and up.scored == 10 and up.objectives == {"t": 0.8} and seen == [[0, 1, 2, 3], list(range(4, 10))]
    assert up.stop_reason.startswith("promoted after 4 subset items")
    # not dominated by the front: promoted though below the cut; dominated: estimated
    assert run_subset(plan(0.9, front=((0.4,),)), ["t"], [10], scorer(truth, [])).promoted
    assert not run_subset(plan(0.9, front=((0.6,),)), ["t"], [10], scorer(truth, [])).promoted
    warm = run_subset(plan(None), ["t"], [10], scorer(truth, []))
    assert warm.promoted and warm.stop_reason is None  # no cut yet: every item, nothing to report


def race_plan(cut_scores: list[float], *, size: int = 30, seed: int = 0, error: float = 0.05,
              test: str = "t") -> SubsetPlan:
    n = len(cut_scores)
    est = Estimator(method="random", total=n, items=tuple(int(i) for i in item_order("t", n, seed)[:size]))
    return SubsetPlan(estimators={"t": est}, weights={"t": 1.0}, signs={"t": 1.0},
                      promote_above=float(np.mean(cut_scores)), reference=7,
                      race=Race(reference=7, reference_scores={"t": cut_scores}, weights={"t": 1.0}, chunk=100,
                                error=error, test=test, seed=seed))


def test_a_promoted_estimate_below_the_cut_after_all_is_raced_out_with_a_difference_estimate() -> None:
    n = 1000
    order = item_order("t", n, 0)
    ref = (np.arange(n) % 10 < 7).astype(float)  # the cut candidate: 0.7
    truth = np.zeros(n)
    truth[order[:30]] = 1.0  # a lucky subset: estimate 1.0 reaches the cut
    truth[order[30:]] = (np.arange(n - 30) % 2 == 0)  # the rest at ~0.5
    seen: list[list[int]] = []
    out = run_subset(race_plan(ref.tolist()), ["t"], [n], scorer(truth.tolist(), seen))
    assert not out.promoted and out.stop_reason.startswith("promotion raced out after")
    scored = [i for chunk in seen for i in chunk]
    assert len(scored) == len(set(scored)) == out.scored < n  # no item scored twice, most never
    assert scored == order[:out.scored].tolist()  # the subset, then the run's item order in looks
    assert out.scored % 100 == 0
    prefix = order[:out.scored]
    expect = ref.mean() + (truth[prefix] - ref[prefix]).mean()
    assert out.objectives["t"] == pytest.approx(expect) and out.objectives["t"] < ref.mean()
    lo, hi = out.intervals["t"]
    assert lo < out.objectives["t"] < hi
    unscored = [v for v in out.item_scores["t"] if math.isnan(v)]
    assert len(unscored) == n - out.scored


def test_a_promoted_estimate_that_does_reach_the_cut_is_scored_on_every_item() -> None:
    n = 1000
    ref = (np.arange(n) % 10 < 5).astype(float)  # 0.5
    truth = (np.arange(n) % 10 < 8).astype(float)  # 0.8
    seen: list[list[int]] = []
    out = run_subset(race_plan(ref.tolist()), ["t"], [n], scorer(truth.tolist(), seen))
    assert out.promoted and out.scored == n and out.objectives["t"] == pytest.approx(0.8)
    assert sorted(i for chunk in seen for i in chunk) == list(range(n))
    assert out.stop_reason.startswith("promoted after 30 subset items")


def test_the_promotion_race_rarely_stops_a_candidate_that_reaches_the_cut() -> None:
    """Candidates and references drawn alike (Bernoulli 0.6 items): among the trials whose
    candidate's full mean does reach the reference's, the share raced out stays near ``error``."""
    rng = np.random.default_rng(1)
    n, error, stopped, reaching = 600, 0.1, 0, 0
    for trial in range(300):
        ref = (rng.random(n) < 0.6).astype(float)
        cand = (rng.random(n) < 0.6).astype(float)
        if cand.mean() < ref.mean():
            continue
        reaching += 1
        # the entry cut below any estimate: every candidate races the reference's item scores
        p = dataclasses.replace(race_plan(ref.tolist(), seed=trial, error=error), promote_above=-1.0)
        out = run_subset(p, ["t"], [n], scorer(cand.tolist(), []))
        stopped += not out.promoted
    assert reaching > 100
    assert stopped / reaching <= error + 0.03, (stopped, reaching)
