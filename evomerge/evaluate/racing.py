"""Racing a candidate against a reference, item chunk by item chunk (docs: search_spaces/README.md,
"Cheaper fitness").

The candidate's items are scored in a fixed order (one seeded permutation per task, the same for
every candidate of a run), ``chunk`` items per task per look. After each look the paired
differences ``d = candidate - reference`` on the items scored so far estimate the fitness gap

    D = sum_t w_t * mean_i d_ti            (w_t: the task's signed weight in the fitness)

and the candidate stops ("raced out") as soon as a one-sided test rejects ``D >= 0`` (it reaches
the reference) at level ``error``. The level holds over all looks of a candidate by a union
bound: each look tests at ``error / looks``. Two tests:

- ``hoeffding`` (default; distribution-free): Serfling's inequality for sampling without
  replacement (Serfling 1974, "Probability inequalities for the sum in sampling without
  replacement"; Bardenet & Maillard 2015, Bernoulli 21(3), Prop. 1.2): the mean of n of N
  values in a range of width 2 is sub-Gaussian with variance proxy ``rho * 2^2 / (4 n)``,
  ``rho = 1 - (n - 1) / N``; independent tasks add their proxies, so the look rejects when
  ``D_hat + sqrt(2 V log(looks / error)) < 0`` with ``V = sum_t w_t^2 rho_t / n_t``.
- ``t``: the paired normal approximation with the finite-population correction,
  ``V = sum_t w_t^2 s_t^2 (1 - n_t / N_t) / n_t`` (``s_t``: the sample deviation of d, at least
  ``1 / n_t``), rejecting when ``D_hat + z(1 - error / looks) sqrt(V) < 0``; asymptotic, as the
  paired t-tests of irace (López-Ibáñez et al. 2016, Operations Research Perspectives 3), and
  far stronger when candidate and reference agree on most items.

Item scores must lie in [0, 1] (``generate`` and ``choice`` tasks; ``loglik`` tasks are not
raced). A raced-out candidate's objectives are its means over the items it was scored on, each
with an interval from the same test (``intervals``); its unscored items are NaN.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal

import numpy as np


@dataclass(frozen=True, kw_only=True)
class Race:
    """What a candidate races against, as the driver sends it with the job."""

    reference: int  # the reference candidate's index (for the record)
    reference_scores: dict[str, list[float]]  # its score on every item of every task
    weights: dict[str, float]  # task name -> signed weight in the fitness (+ maximize, - minimize)
    chunk: int  # items per task per look
    error: float  # the chance of racing out a candidate that reaches the reference
    test: Literal["hoeffding", "t"] = "hoeffding"
    seed: int = 0  # the item order's seed (the run's)


def item_order(task: str, n: int, seed: int) -> np.ndarray:
    """The order a run scores a task's ``n`` items in: a permutation seeded by the run's seed and
    the task's name (the same for every candidate, so differences are paired)."""
    digest = hashlib.sha256(f"{seed}:{task}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little")).permutation(n)


def looks(sizes: Sequence[int], chunk: int) -> int:
    return max(1, max(math.ceil(n / chunk) for n in sizes))


def _rho(n: int, total: int) -> float:
    return 1.0 - (n - 1) / total


def gap_bound(diffs: dict[str, np.ndarray], sizes: dict[str, int], weights: dict[str, float], *, level: float,
              test: str) -> tuple[float, float]:
    """(estimate of D, upper confidence bound of D at one-sided level ``level``) from the paired
    differences scored so far (``diffs[t]``: n_t values of task t, whose population has
    ``sizes[t]`` items)."""
    est, var = 0.0, 0.0
    for t, d in diffs.items():
        n, total, w = len(d), sizes[t], weights[t]
        est += w * float(d.mean())
        if n >= total:
            continue  # the whole task is scored: its part of D is exact
        if test == "hoeffding":
            var += w * w * _rho(n, total) / n
        else:
            s2 = max(float(d.var(ddof=1)) if n > 1 else 1.0, 1.0 / n)
            var += w * w * s2 * (1.0 - n / total) / n
    if var == 0.0:
        return est, est
    if test == "hoeffding":
        radius = math.sqrt(2.0 * var * math.log(1.0 / level))
    else:
        radius = NormalDist().inv_cdf(1.0 - level) * math.sqrt(var)
    return est, est + radius


def mean_interval(scores: np.ndarray, total: int, *, level: float, test: str) -> tuple[float, float]:
    """A two-sided interval for a task's full-set mean from ``scores`` (n of ``total`` items, in
    [0, 1]), by the same test at ``level`` per side."""
    n = len(scores)
    m = float(scores.mean())
    if n >= total:
        return m, m
    if test == "hoeffding":
        radius = math.sqrt(_rho(n, total) / (2.0 * n) * math.log(1.0 / level))
    else:
        s2 = max(float(scores.var(ddof=1)) if n > 1 else 0.25, 1.0 / n)
        radius = NormalDist().inv_cdf(1.0 - level) * math.sqrt(s2 * (1.0 - n / total) / n)
    return max(0.0, m - radius), min(1.0, m + radius)


@dataclass
class RaceOutcome:
    item_scores: dict[str, list[float]]  # full length per task; NaN where not scored
    scored: int  # items scored, over all tasks
    raced_out: bool
    stop_reason: str | None
    intervals: dict[str, tuple[float, float]]  # per task, for a raced-out candidate
    tested: dict[str, np.ndarray] = field(default_factory=dict)  # raced out: each task's tested prefix of the order
    gap: float = 0.0  # raced out: the estimated fitness gap to the reference, and its upper bound
    upper: float = 0.0


def run_race(race: Race, names: Sequence[str], sizes: Sequence[int],
             score: Callable[[int, np.ndarray], list[float]],
             check: Callable[[str], None] = lambda where: None,
             scores: list[np.ndarray] | None = None) -> RaceOutcome:
    """Score task ``k`` (``names[k]``, ``sizes[k]`` items) through ``score(k, item_indices)`` in
    looks of ``race.chunk`` items per task, stopping once the test rejects reaching the
    reference; ``check(where)`` runs between looks (the deadline). ``scores``: items already
    scored (NaN elsewhere; filled in place), which the looks do not score again."""
    for name, n in zip(names, sizes, strict=True):
        ref = race.reference_scores.get(name)
        if ref is None or len(ref) != n:
            raise ValueError(f"racing: the reference has no scores for all {n} items of task {name!r}")
    orders = [item_order(name, n, race.seed) for name, n in zip(names, sizes, strict=True)]
    scores = scores if scores is not None else [np.full(n, np.nan) for n in sizes]
    total_looks = looks(sizes, race.chunk)
    level = race.error / total_looks
    refs = {name: np.asarray(race.reference_scores[name], dtype=float) for name in names}
    for look in range(total_looks):
        for k in range(len(names)):
            idx = orders[k][look * race.chunk:(look + 1) * race.chunk]
            idx = idx[np.isnan(scores[k][idx])]
            if len(idx):
                scores[k][idx] = score(k, idx)
        check(f"look {look + 1} of {total_looks}")
        if look == total_looks - 1:
            break
        done = {name: orders[k][:min(sizes[k], (look + 1) * race.chunk)] for k, name in enumerate(names)}
        diffs = {name: scores[k][done[name]] - refs[name][done[name]] for k, name in enumerate(names)}
        est, upper = gap_bound(diffs, dict(zip(names, sizes, strict=True)), race.weights, level=level, test=race.test)
        if upper < 0.0:
            scored = sum(int(np.count_nonzero(~np.isnan(s))) for s in scores)
            intervals = {name: mean_interval(scores[k][done[name]], sizes[k], level=level / 2, test=race.test)
                         for k, name in enumerate(names)}
            reason = (f"raced out after {scored} of {sum(sizes)} items: the fitness gap to candidate "
                      f"{race.reference} is {est:+.4f}, at most {upper:+.4f} ({race.test}, error {race.error:g})")
            return RaceOutcome(_by_name(names, scores), scored, True, reason, intervals, done, est, upper)
    return RaceOutcome(_by_name(names, scores), sum(sizes), False, None, {})


def _by_name(names: Sequence[str], scores: list[np.ndarray]) -> dict[str, list[float]]:
    return {name: s.tolist() for name, s in zip(names, scores, strict=True)}
