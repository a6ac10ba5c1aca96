"""Full-set scores estimated from an item subset, fitted on the archive's own per-item scores
(docs: search_spaces/README.md, "Cheaper fitness: subsets").

A task has N items; a candidate is scored on a subset S of k of them and its full-set mean is
estimated. Three estimators, each fitted on ``Y`` (exactly scored candidates x items, scores in
[0, 1], in candidate order) and refitted as the run grows:

- ``random``: S is the first k items of the run's fixed item order; the estimate is the subset
  mean (unbiased for sampling without replacement).
- ``anchor`` (tinyBenchmarks, Polo et al. 2024, "tinyBenchmarks: evaluating LLMs with fewer
  examples", sec. 3.1): items are points in R^M (their scores over the M candidates of Y); k-means
  with k clusters; S holds, per cluster, the item nearest its centre, weighted by the cluster's
  share of the N items. The estimate is the weighted sum of S's scores.
- ``irt`` (ibid., sec. 3.2, "p-IRT"; the estimator MERGE3 uses, Mencattini et al. 2025): a
  two-parameter logistic item response model P(y_ij = 1) = sigmoid(a_i * theta_j - b_i) is fitted
  to Y by penalized maximum likelihood; S is the anchor subset; a new candidate's ability theta
  is its maximum-likelihood fit on S, and the estimate is (sum over S of its scores + sum over
  the other items of sigmoid(a_i theta - b_i)) / N.

Promotion: a candidate whose estimated fitness reaches the top-k cut (the fitness of the k-th best
exact candidate, the reference) is scored on its remaining items, by default as a race
(:mod:`evomerge.evaluate.racing`): the run's item order in looks of ``chunk`` items per task,
each look testing the paired gap to the reference on the order's prefix scored so far (a
sample without replacement, so the anchors' non-random choice does not bias it). A candidate the
test stops is not promoted after all; its objectives are then the difference estimates
``ref_t + mean(d_t)`` over that prefix (the reference's exact task mean plus the paired gap: the
reference as a control variate, so the estimate shares the test's verdict that it is below the
cut), with the test's interval.

Every estimate carries an interval: ``random`` the normal interval with the finite-population
correction; ``anchor`` and ``irt`` the estimate +- z times the estimator's root-mean-square error
over the candidates of Y (their full-set means are known), a leave-in measure of how far it errs
on this run's candidates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np

from evomerge.evaluate.racing import Race, gap_bound, item_order, looks, run_race
from evomerge.pareto import dominates

Method = Literal["random", "anchor", "irt"]


@dataclass(frozen=True, kw_only=True)
class Estimator:
    """A task's subset and how its scores estimate the full-set mean (fitted by :func:`fit`)."""

    method: Method
    total: int  # N, the task's items
    items: tuple[int, ...]  # S, the item indices a candidate is scored on (in scoring order)
    weights: tuple[float, ...] = ()  # anchor: each item's share of the N items (sum 1)
    a: tuple[float, ...] = ()  # irt: discrimination per item (all N)
    b: tuple[float, ...] = ()  # irt: difficulty per item (all N)
    rmse: float = 0.0  # anchor, irt: root-mean-square error over the candidates it was fitted on
    fitted_on: int = 0  # how many exactly scored candidates it was fitted on

    def estimate(self, scores: np.ndarray) -> float:
        """The full-set mean from ``scores`` (one per item of ``items``, in that order)."""
        y = np.asarray(scores, dtype=float)
        if self.method == "random" or (self.method == "anchor" and not self.weights):
            return float(y.mean())
        if self.method == "anchor":
            return float(np.dot(np.asarray(self.weights), y))
        a, b = np.asarray(self.a), np.asarray(self.b)
        idx = np.asarray(self.items)
        theta = ability(y, a[idx], b[idx])
        rest = np.ones(self.total, dtype=bool)
        rest[idx] = False
        predicted = _sigmoid(a[rest] * theta - b[rest]).sum()
        return float((y.sum() + predicted) / self.total)

    def interval(self, scores: np.ndarray, *, level: float) -> tuple[float, float]:
        """A two-sided interval for the full-set mean at ``level`` per side."""
        y = np.asarray(scores, dtype=float)
        est = self.estimate(y)
        z = NormalDist().inv_cdf(1.0 - level)
        n = len(y)
        if self.method == "random":
            if n >= self.total:
                return est, est
            s2 = max(float(y.var(ddof=1)) if n > 1 else 0.25, 1.0 / n)
            radius = z * math.sqrt(s2 * (1.0 - n / self.total) / n)
        else:
            radius = z * self.rmse
        return max(0.0, est - radius), min(1.0, est + radius)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30.0, 30.0)))


def ability(y: np.ndarray, a: np.ndarray, b: np.ndarray, *, prior: float = 1.0) -> float:
    """The maximum a-posteriori ability theta of one candidate from its scores ``y`` on items with
    discriminations ``a`` and difficulties ``b`` (a standard-normal prior scaled by ``prior``
    keeps all-right and all-wrong subsets finite); Newton's method on the concave log-posterior."""
    theta = 0.0
    for _ in range(50):
        p = _sigmoid(a * theta - b)
        grad = float(np.dot(a, y - p)) - theta / prior
        hess = -float(np.dot(a * a, p * (1.0 - p))) - 1.0 / prior
        step = grad / hess
        theta -= step
        if abs(step) < 1e-9:
            break
    return theta


def fit_irt(Y: np.ndarray, *, steps: int = 400, lr: float = 0.05, l2: float = 0.01, seed: int = 0
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 2PL item response model fitted to ``Y`` (M candidates x N items, scores in [0, 1]) by
    penalized maximum likelihood with Adam (Kingma & Ba 2015): returns (a, b, theta). Scores in
    between 0 and 1 enter as fractional successes (the Bernoulli log-likelihood's cross-entropy)."""
    rng = np.random.default_rng(seed)
    m, n = Y.shape
    theta = rng.normal(0.0, 0.1, m)
    a = np.ones(n)
    b = np.zeros(n)
    params = [theta, a, b]
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    for t in range(1, steps + 1):
        p = _sigmoid(np.outer(theta, a) - b)
        r = Y - p  # d loglik / d logit
        grads = [r @ a - l2 * theta, theta @ r - l2 * (a - 1.0), -r.sum(axis=0) - l2 * b]
        for k, (g, (m1, m2)) in enumerate(zip(grads, moments, strict=True)):
            m1 *= 0.9
            m1 += 0.1 * g
            m2 *= 0.999
            m2 += 0.001 * g * g
            params[k] += lr * (m1 / (1 - 0.9 ** t)) / (np.sqrt(m2 / (1 - 0.999 ** t)) + 1e-8)
    return a, b, theta


def anchors(Y: np.ndarray, k: int, *, seed: int = 0, iterations: int = 50) -> tuple[list[int], list[float]]:
    """k anchor items of ``Y`` (M x N) and their weights: k-means (Lloyd's algorithm, k-means++
    seeding) over the N item columns; per cluster the item nearest its centre, weighted by the
    cluster's size / N. Empty clusters are dropped (fewer than k anchors)."""
    rng = np.random.default_rng(seed)
    X = Y.T.astype(float)  # N points in R^M
    n = len(X)
    k = min(k, n)
    centres = [X[rng.integers(n)]]
    for _ in range(1, k):
        d2 = np.min(((X[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1), axis=1)
        total = d2.sum()
        centres.append(X[rng.choice(n, p=d2 / total)] if total > 0 else X[rng.integers(n)])
    C = np.asarray(centres)
    labels = np.zeros(n, dtype=int)
    for _ in range(iterations):
        labels = ((X[:, None, :] - C[None]) ** 2).sum(-1).argmin(axis=1)
        moved = np.array([X[labels == c].mean(axis=0) if (labels == c).any() else C[c] for c in range(k)])
        if np.allclose(moved, C):
            break
        C = moved
    items, weights = [], []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        if not len(members):
            continue
        nearest = members[((X[members] - C[c]) ** 2).sum(-1).argmin()]
        items.append(int(nearest))
        weights.append(len(members) / n)
    return items, weights


def fit(method: Method, task: str, total: int, size: int, Y: np.ndarray | None, *, seed: int) -> Estimator:
    """The estimator of ``method`` for a task of ``total`` items scored on ``size`` of them, fitted
    on ``Y`` (exactly scored candidates x items; None or too few rows: the random subset)."""
    size = min(size, total)
    order = item_order(task, total, seed)
    if method == "random" or Y is None or len(Y) < 2:
        return Estimator(method="random" if method == "random" else method, total=total,
                         items=tuple(int(i) for i in order[:size]), fitted_on=0 if Y is None else len(Y))
    Y = np.asarray(Y, dtype=float)
    picked, weights = anchors(Y, size, seed=seed)
    truth = Y.mean(axis=1)
    if method == "anchor":
        est = Y[:, picked] @ np.asarray(weights)
        rmse = float(np.sqrt(np.mean((est - truth) ** 2)))
        return Estimator(method="anchor", total=total, items=tuple(picked), weights=tuple(weights), rmse=rmse,
                         fitted_on=len(Y))
    a, b, _ = fit_irt(Y, seed=seed)
    proto = Estimator(method="irt", total=total, items=tuple(picked), a=tuple(a.tolist()), b=tuple(b.tolist()),
                      fitted_on=len(Y))
    est = np.array([proto.estimate(row[picked]) for row in Y])
    rmse = float(np.sqrt(np.mean((est - truth) ** 2)))
    return Estimator(method="irt", total=total, items=proto.items, a=proto.a, b=proto.b, rmse=rmse, fitted_on=len(Y))


@dataclass(frozen=True, kw_only=True)
class SubsetPlan:
    """What a candidate scored on a subset is sent with (the driver fixes it when the candidate is
    asked, from the committed results before it)."""

    estimators: dict[str, Estimator]  # task name -> its subset and estimator
    weights: dict[str, float]  # task name -> signed weight in the fitness
    signs: dict[str, float]  # task name -> +1 maximized, -1 minimized (the front's orientation)
    promote_above: float | None  # the fitness of the top-k's last exact candidate; None: score every item
    reference: int | None = None  # that candidate's index (for the record)
    front: tuple[tuple[float, ...], ...] = ()  # signed objective vectors of the exact Pareto front
    error: float = 0.05
    race: Race | None = None  # the promotion race against the cut (None: the rest is scored at once)


@dataclass
class SubsetOutcome:
    item_scores: dict[str, list[float]]  # full length per task; NaN where not scored
    objectives: dict[str, float]  # estimates, or exact means once promoted
    scored: int
    promoted: bool
    intervals: dict[str, tuple[float, float]]
    stop_reason: str | None


def run_subset(plan: SubsetPlan, names: Sequence[str], sizes: Sequence[int],
               score: Callable[[int, np.ndarray], list[float]],
               check: Callable[[str], None] = lambda where: None) -> SubsetOutcome:
    """Score each task ``k`` on its estimator's items through ``score(k, item_indices)``, estimate
    the full-set objectives, and score the remaining items too when the estimate is promoted (it
    reaches ``promote_above`` or is not dominated by ``front``)."""
    scores = [np.full(n, np.nan) for n in sizes]
    for k, (name, n) in enumerate(zip(names, sizes, strict=True)):
        est = plan.estimators[name]
        if est.total != n:
            raise ValueError(f"subset: task {name!r} has {n} items, its estimator {est.total}")
        idx = np.asarray(est.items)
        scores[k][idx] = score(k, idx)
        check(f"the subset of task {name}")
    estimates = {name: plan.estimators[name].estimate(scores[k][np.asarray(plan.estimators[name].items)])
                 for k, name in enumerate(names)}
    fitness = sum(plan.weights[n] * v for n, v in estimates.items())
    signed = np.array([plan.signs[n] * estimates[n] for n in names])
    reaches_cut = plan.promote_above is None or fitness >= plan.promote_above
    on_front = bool(plan.front) and not any(dominates(np.asarray(f), signed) for f in plan.front)
    subset_items = sum(len(plan.estimators[n].items) for n in names)
    if reaches_cut and not on_front and plan.promote_above is not None and plan.race is not None:
        raced = _promotion_race(plan, names, sizes, scores, score, check, fitness, subset_items)
        if raced is not None:
            return raced
    elif reaches_cut or on_front:
        for k, name in enumerate(names):
            rest = np.flatnonzero(np.isnan(scores[k]))
            if len(rest):
                scores[k][rest] = score(k, rest)
            check(f"the rest of task {name}")
    if reaches_cut or on_front:
        why = None if plan.promote_above is None else (
            f"promoted after {subset_items} subset items: estimated fitness {fitness:.4f} reaches the top-k cut "
            f"{plan.promote_above:.4f} (candidate {plan.reference}) or the Pareto front; scored on every item")
        return SubsetOutcome({n: s.tolist() for n, s in zip(names, scores, strict=True)},
                             {n: float(s.mean()) for n, s in zip(names, scores, strict=True)},
                             sum(sizes), True, {}, why)
    intervals = {}
    for k, name in enumerate(names):
        est = plan.estimators[name]
        intervals[name] = est.interval(scores[k][np.asarray(est.items)], level=plan.error / 2)
    methods = sorted({plan.estimators[n].method for n in names})
    fitted = max(plan.estimators[n].fitted_on for n in names)
    reason = (f"estimated from {subset_items} of {sum(sizes)} items ({'/'.join(methods)}, fitted on {fitted} exact "
              f"candidates): fitness {fitness:.4f} is below the top-k cut {plan.promote_above:.4f} "
              f"(candidate {plan.reference})")
    return SubsetOutcome({n: s.tolist() for n, s in zip(names, scores, strict=True)}, estimates, subset_items, False,
                         intervals, reason)


def _promotion_race(plan: SubsetPlan, names: Sequence[str], sizes: Sequence[int], scores: list[np.ndarray],
                    score: Callable[[int, np.ndarray], list[float]], check: Callable[[str], None],
                    fitness: float, subset_items: int) -> SubsetOutcome | None:
    """Race the candidate against the cut on its remaining items (:func:`~evomerge.evaluate.racing.run_race`
    over the items the subset left unscored): the estimated outcome when the test stops it (module
    docstring), else None (every item is scored in ``scores``: the candidate is promoted)."""
    race = plan.race
    assert race is not None and plan.promote_above is not None
    out = run_race(race, names, sizes, score, check, scores=scores)
    if not out.raced_out:
        return None
    level = race.error / looks(sizes, race.chunk) / 2
    objectives, intervals = {}, {}
    for k, name in enumerate(names):
        ref = np.asarray(race.reference_scores[name], dtype=float)
        prefix = out.tested[name]
        mid, top = gap_bound({name: scores[k][prefix] - ref[prefix]}, {name: sizes[k]}, {name: 1.0}, level=level,
                             test=race.test)
        objectives[name] = float(ref.mean()) + mid
        intervals[name] = (max(0.0, float(ref.mean()) + 2 * mid - top), min(1.0, float(ref.mean()) + top))
    reason = (f"promotion raced out after {out.scored} of {sum(sizes)} items: estimated fitness {fitness:.4f} from "
              f"{subset_items} subset items reached the top-k cut {plan.promote_above:.4f} (candidate "
              f"{plan.reference}); the paired gap to it is {out.gap:+.4f}, at most {out.upper:+.4f} "
              f"({race.test}, error {race.error:g})")
    return SubsetOutcome(out.item_scores, objectives, out.scored, False, intervals, reason)
