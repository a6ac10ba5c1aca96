"""The search loop: ask, persist, dispatch, record, tell; crash-safe and resumable.

Promises (docs/reliability.md) and how the loop keeps them:
1. No lost candidates: every asked genome is PENDING in the store before it is dispatched;
   resume re-dispatches PENDING and RUNNING rows.
2. Exactly-once recording: a result is committed by the store's compare-and-set on
   (candidate, attempt); a lost worker's candidate is retried up to ``max_attempts``.
3. Strategy consistency: the strategy is told committed results only, in candidate order, one
   at a time, and after each tell it asks until ``lag`` candidates are outstanding. Its whole
   ask/tell sequence is therefore a function of the seed, the lag and the results, not of
   timing or worker count, so resume rebuilds it by replaying the committed rows (checking
   every regenerated genome against the stored one), and a run killed and resumed ends with
   the same archive as one that was not. Snapshots are checked against the replay; replay wins.
4. One driver per run: every write carries the lease; a superseded driver's writes fail.

A stop request (SIGTERM, as Kubernetes, Slurm and ``ray job stop`` send, or Ctrl-C; see
:func:`evomerge.runner.service.execute`) ends the loop at its next step: nothing new is
dispatched, candidates still running are put back to PENDING (their late results are refused
by the compare-and-set), and the run resumes exactly where it stopped.

Workers stay busy across the strategy's pace: up to ``lag`` (default 2 x workers) candidates
may be outstanding, so one slow candidate does not idle the other slots; CMA-ES still waits at
its generation barrier, steady-state strategies (M2N2, random, nevergrad) do not.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from evomerge.errors import EvomergeError, StaleLeaseError
from evomerge.evaluate.base import ItemPlan
from evomerge.evaluate.estimate import Estimator, SubsetPlan, fit
from evomerge.evaluate.racing import Race
from evomerge.pareto import first_front
from evomerge.recipe import recipe_from_dict
from evomerge.result import EvalResult, Fidelity, Status
from evomerge.runner.backend import Backend, Job, Outcome
from evomerge.runner.race_reference import TopExact
from evomerge.space.schema import PromotionRace, Racing, SearchSpace
from evomerge.store import CandidateRow, Lease, NewCandidate, Store
from evomerge.strategies.base import Evaluated, Replayable, stack_scores
from evomerge.strategies.registry import strategy_from_state

if TYPE_CHECKING:
    from evomerge.space.codec import Codec


@dataclass
class DriverOptions:
    lag: int = 2  # candidates asked ahead of the told prefix (part of the run: fixed at creation)
    max_attempts: int = 3  # per candidate, counting lost workers and hard timeouts
    deadline_s: float | None = None  # per candidate, enforced cooperatively and hard (+ slack)
    slack_s: float = 30.0
    grace_s: float = 60.0  # a RUNNING candidate without a heartbeat for this long is requeued
    lease_ttl_s: float = 60.0
    snapshot_every: int = 50  # tells between strategy snapshots (and one at the end)
    supervise_s: float = 1.0  # how often to look for silent workers
    poll_s: float = 0.2
    verbose: bool = False  # a log line per candidate
    reference_sources: bool = False  # score each source model once, as it is (fixed at creation)


@dataclass
class RunStats:
    completed: int = 0
    failed_attempts: int = 0
    cached: int = 0
    started: float = field(default_factory=time.monotonic)
    driver_s: float = 0.0  # time in the driver's own work (store, strategy, dispatch), not waiting


@dataclass
class _Pending:
    """What the driver knows of a candidate it just persisted (until its result is read back)."""

    index: int
    recipe_id: str
    status: Status = Status.PENDING


def crash_point(name: str, index: int) -> None:
    """Failure tests: ``EVOMERGE_CRASH_AT=name:index`` SIGKILLs the driver at that point."""
    want = os.environ.get("EVOMERGE_CRASH_AT")
    if want and want == f"{name}:{index}":
        os.kill(os.getpid(), signal.SIGKILL)


class Driver:
    def __init__(self, *, store: Store, lease: Lease, space: SearchSpace, codec: Codec, strategy: Replayable,
                 backend: Backend, objective_names: list[str], options: DriverOptions,
                 log: Callable[[str], None] = print, on_progress: Callable[[Driver], None] | None = None) -> None:
        self.store, self.lease, self.space, self.codec = store, lease, space, codec
        self.strategy, self.backend, self.names, self.opts = strategy, backend, objective_names, options
        self.log, self.on_progress = log, on_progress
        # each objective's sign (maximize +1) and signed weight: the fitness is sum(weights[n] * objective n)
        self.signs = {n: 1.0 if o.direction == "maximize" else -1.0
                      for o, n in zip(space.objectives, objective_names, strict=True)}
        self.weights = {n: self.signs[n] * o.weight for o, n in zip(space.objectives, objective_names, strict=True)}
        self.run_id = lease.run_id
        self.budget = space.budget
        self.rows: dict[int, CandidateRow] = {}  # every candidate of the run, as last seen
        self.recipe_of: dict[int, str] = {}  # index -> recipe JSON
        self.first_with: dict[str, int] = {}  # recipe_id -> first index with that recipe
        self.waiting: dict[int, list[int]] = {}  # index -> later indices with the same recipe
        self.queue: list[int] = []  # PENDING indices to dispatch, in order
        self.race_ref: dict[int, int | None] = {}  # index -> the candidate it races against
        self.top_exact = TopExact()  # told, exactly scored candidates by fitness
        racing = space.fitness.racing if space.fitness else None
        self.racing = racing
        if racing is None:
            self.race_rank = None
        elif isinstance(racing.reference, int):
            self.race_rank = racing.reference
        else:
            self.race_rank = 1 if racing.reference == "incumbent" else strategy.selection_rank()
        self.subset = space.fitness.subset if space.fitness else None
        if self.subset is not None:
            self.race_rank = self.subset.promote  # the reference: the top-k cut a subset estimate must reach
        self.exact_at_ask: dict[int, int] = {}  # index -> how many told exact candidates there were when asked
        self._fits: dict[int, dict[str, Estimator]] = {}
        self._replaying = False
        self._added: int | None = None
        self._prior_snapshot: tuple[int, dict[str, Any], dict[str, np.ndarray]] | None = None
        self.told = 0
        self.stats = RunStats()
        self.best: tuple[float, int] | None = None
        self.stop_requested: str | None = None  # set (to the reason) from a signal handler
        self._last_renew = self._last_supervise = time.monotonic()
        self.source_jobs: list[Job] = []  # the sources' own evaluations still to dispatch
        self.source_of: dict[int, tuple[str, str]] = {}  # negative job index -> (source, role)

    # ------------------------------------------------------------------ resume
    def load_existing(self) -> None:
        """Rebuild from the store: rows, the strategy (by replay), the dispatch queue."""
        self._prior_snapshot = self.store.latest_snapshot(  # read before the replay writes any
            self.run_id, warn=lambda m: self.log(f"warning: {m}"))
        requeued = self.store.requeue_running(self.lease)
        if requeued:
            self.log(f"requeued {len(requeued)} candidates that were running when the last driver stopped")
        for row in self.store.candidates(self.run_id, with_scores=True):
            self.rows[row.index] = row
            self.recipe_of[row.index] = row.recipe_json
            self.race_ref[row.index] = row.race_ref
            self.first_with.setdefault(row.recipe_id, row.index)
            if row.status.terminal:
                self._note_best(row)

    def check_snapshot(self) -> None:
        """Compare the last driver's latest snapshot with the replayed strategy (promise 3:
        replay wins)."""
        snap = self._prior_snapshot
        if snap is None:
            return
        told, state, arrays = snap
        arrays = dict(arrays) | stack_scores(  # per-item scores come from the archive
            {i: row.item_scores for i, row in self.rows.items() if getattr(row, "item_scores", None)})
        try:
            snap_strategy = strategy_from_state(state, arrays)
        except Exception as err:  # noqa: BLE001 - a damaged snapshot never stops a resume: replay wins
            msg = err.message if isinstance(err, EvomergeError) else f"{type(err).__name__}: {err}"
            self.log(f"warning: snapshot at {told} tells does not rebuild ({msg}); using the replay")
            return
        if snap_strategy.events != self.strategy.events[: len(snap_strategy.events)]:
            self.log(f"warning: snapshot at {told} tells disagrees with the replay of committed results; "
                     "using the replay")
        else:
            self.log(f"snapshot at {told} tells matches the replay")

    # ------------------------------------------------------------------ strategy pacing
    def _ask_more(self) -> None:
        """Ask one at a time until ``lag`` candidates are outstanding (or the budget is asked)."""
        new: list[NewCandidate] = []
        while self.strategy_asked < min(self.budget, self.told + self.opts.lag):
            got = self.strategy.ask(1)
            if not got:
                break  # e.g. CMA-ES at its generation barrier
            g = got[0]
            row = self.rows.get(g.index)
            recipe = self.codec.decode(g.x)
            genome = [float(v) for v in g.x]
            ref = None if self.race_rank is None else self.top_exact.kth(self.race_rank)
            if self.subset is not None:
                self.exact_at_ask[g.index] = len(self.top_exact.in_order)
            if row is not None:  # resuming: the replay must regenerate what the store holds
                if row.race_ref != ref and row.genome == genome:
                    raise EvomergeError(
                        f"run {self.run_id}: replay gave candidate {g.index} reference {ref} (racing or subset "
                        f"promotion), the store holds {row.race_ref}",
                        hint="the fitness settings or library version changed since the run started; start a new run")
                if row.genome != genome or row.recipe_id != recipe.recipe_id:
                    if row.genome == genome and _recipe_format(row) == 1:
                        raise EvomergeError(
                            f"run {self.run_id}: its recipes are recipe format 1 (stored before recipe formats); "
                            f"this evomerge writes format 2 (mergekit's reading), so the run cannot go on",
                            hint="its candidates still export and show as they were scored; start a new run to "
                                 "search further")
                    raise EvomergeError(
                        f"run {self.run_id}: replay of candidate {g.index} gave another genome than the store holds",
                        hint="the search space, strategy or library version changed since the run started; "
                             "start a new run")
                continue
            new.append(NewCandidate(g.index, g.generation, recipe.canonical_json(), recipe.recipe_id,
                                    genome, tuple(g.parents), race_ref=ref))
        if not new:
            return
        self.store.add_candidates(self.lease, new)  # committed before any dispatch (promise 1)
        self._added = new[-1].index
        for c in new:
            self.recipe_of[c.index] = c.recipe_json
            self.race_ref[c.index] = c.race_ref
            self.rows[c.index] = _Pending(c.index, c.recipe_id)  # type: ignore[assignment]
            first = self.first_with.setdefault(c.recipe_id, c.index)
            if first != c.index:
                if self.rows[first].status.terminal:
                    self._complete_cached(c.index, first)
                else:
                    self.waiting.setdefault(first, []).append(c.index)
            else:
                self.queue.append(c.index)

    @property
    def strategy_asked(self) -> int:
        return len(self.strategy.genomes)

    def _evaluated(self, row: CandidateRow) -> Evaluated:
        g = self.strategy.genomes[row.index]
        objectives = None
        complete = row.status == Status.COMPLETE
        if row.objectives is not None and complete:
            objectives = tuple(self.signs[n] * row.objectives[n] for n in self.names)
        # a raced-out candidate is told its estimate; its per-item scores are partial, so a
        # strategy that competes for items (M2N2) does not take it into its archive
        exact = complete and row.fidelity == Fidelity.EXACT
        return Evaluated(g, row.fitness if complete else None, row.item_scores if exact else {}, objectives)

    def _tell_ready(self) -> None:
        """Tell committed results in candidate order, one at a time, asking after each."""
        while self.told < self.budget:
            row = self.rows.get(self.told)
            if row is None or not row.status.terminal or self.told not in self.strategy.genomes:
                return
            self.strategy.tell([self._evaluated(row)])
            self.top_exact.add(row)
            self.told += 1
            if self.told % self.opts.snapshot_every == 0 or self.told == self.budget:
                self._snapshot()
            self._ask_more()

    def _snapshot(self) -> None:
        """The strategy's state; per-item scores stay out (the archive has them, see check_snapshot)."""
        if self._replaying:
            return
        state = self.strategy.state_dict()
        arrays = self.strategy.state_arrays(scores=False)
        crash_point("snapshot", self.told)
        self.store.save_snapshot(self.lease, self.told, state, arrays)

    # ------------------------------------------------------------------ dispatch and results
    def _claim(self) -> list[Job]:
        """Claim (PENDING -> RUNNING) as many queued candidates as there are free slots."""
        jobs = []
        while self.source_jobs and self.backend.free_slots() > len(jobs):
            jobs.append(self.source_jobs.pop(0))
        while self.queue and self.backend.free_slots() > len(jobs):
            index = self.queue.pop(0)
            attempt = self.store.claim(self.lease, index, worker="dispatch")
            jobs.append(Job(index, attempt, self.recipe_of[index], self.space.seed, self.opts.deadline_s,
                            self._plan(index)))
        return jobs

    def _plan(self, index: int) -> ItemPlan | None:
        """How few items a candidate is scored on: its race, its subset, or None (every item)."""
        ref = self.race_ref.get(index)
        if self.racing is not None:
            return None if ref is None else self._race(ref, self.racing)
        m = None if self.subset is None else self._fit_size(self.exact_at_ask[index])
        if m is None:
            return None
        race = self.subset.race
        return SubsetPlan(estimators=self._estimators(m), weights=self.weights, signs=self.signs,
                          promote_above=None if ref is None else self.rows[ref].fitness, reference=ref,
                          front=self._front(index) if self.subset.pareto else (), error=self.subset.error,
                          race=None if ref is None or race is None else self._race(ref, race))

    def _race(self, ref: int, settings: Racing | PromotionRace) -> Race:
        """A race against candidate ``ref`` (``settings``: the space's racing, or a subset's promotion race)."""
        return Race(reference=ref, reference_scores=self.rows[ref].item_scores, weights=self.weights,
                    chunk=settings.chunk, error=settings.error, test=settings.test, seed=self.space.seed)

    # ------------------------------------------------------------------ item subsets (fitness: subset)
    def _fit_size(self, n: int) -> int | None:
        """How many of the ``n`` told exact candidates at a candidate's ask it is estimated from:
        None in the warm-up (it is scored on every item), else ``n`` rounded down to ``refit``."""
        assert self.subset is not None
        if n < self.subset.warmup:
            return None
        return self.subset.warmup + (n - self.subset.warmup) // self.subset.refit * self.subset.refit

    def _estimators(self, m: int) -> dict[str, Estimator]:
        """The estimators fitted on the first ``m`` told exact candidates (cached per ``m``)."""
        assert self.subset is not None
        if m not in self._fits:
            rows = [self.rows[i] for i in self.top_exact.in_order[:m]]
            self._fits[m] = {n: fit(self.subset.method, n, len(rows[0].item_scores[n]), self.subset.size,
                                    np.array([r.item_scores[n] for r in rows], dtype=float), seed=self.space.seed)
                             for n in self.names}
        return self._fits[m]

    def _front(self, index: int) -> tuple[tuple[float, ...], ...]:
        """The signed objective vectors of the Pareto front of the exact candidates told before
        ``index`` was asked (fixed then, so a replay derives the same)."""
        vecs = [tuple(self.signs[n] * self.rows[i].objectives[n] for n in self.names)
                for i in self.top_exact.in_order[:self.exact_at_ask[index]] if self.rows[i].objectives]
        return tuple(vecs[i] for i in sorted(first_front(np.array(vecs)))) if vecs else ()

    def _dispatch(self, jobs: list[Job]) -> None:
        for job in jobs:
            self.backend.submit(job)
            crash_point("dispatch", job.index)

    def _step(self, outcomes: list[Outcome]) -> None:
        """One transaction (fenced once): record results, tell, ask (PENDING rows), claim for the
        free slots. Dispatch follows the commit, so every dispatched candidate is durable."""
        self._added = None
        with self.store.unit(self.lease):
            for out in outcomes:
                self._record(out)
            self._tell_ready()
            jobs = self._claim()
        if self._added is not None:
            crash_point("pending", self._added)
        self._dispatch(jobs)

    def _record(self, out: Outcome) -> None:
        job = out.job
        if job.index < 0:
            self._record_source(job.index, out.result, out.error)
            return
        if out.result is None:  # the worker process was lost
            self.stats.failed_attempts += 1
            row = self.store.fail_attempt(self.lease, job.index, job.attempt, out.error or "worker lost",
                                          self.opts.max_attempts)
            if row is None:
                self.log(f"candidate {job.index} attempt {job.attempt}: {out.error}; a stale attempt, ignored")
            elif row.status == Status.PENDING:
                self.log(f"candidate {job.index} attempt {job.attempt}: {out.error}; retrying")
                self.queue.insert(0, job.index)
            else:
                self.log(f"candidate {job.index} attempt {job.attempt}: {out.error}; "
                         f"giving up after {job.attempt} attempts")
                self._finished(row)
            return
        crash_point("result", job.index)
        row = self.store.complete(self.lease, job.index, job.attempt, out.result,
                                  fitness=self._scalar(out.result.objectives))
        if row is not None:
            self._finished(row)
        else:
            self.log(f"candidate {job.index} attempt {job.attempt}: late or duplicate result ignored")

    # ------------------------------------------------------------------ the sources' own scores
    def _queue_sources(self) -> None:
        """Queue one evaluation of each source model as it is (a one-model linear recipe, weight 1:
        the model's own tensors), ahead of the candidates, for those the archive has no score of.
        They use negative job indices: they are not candidates, the strategy never sees them and
        the budget does not count them."""
        if not self.opts.reference_sources:
            return
        done = {s["name"] for s in self.store.source_scores(self.run_id)}
        for k, (name, role) in enumerate([(self.space.base, "base"), *((e, "expert") for e in self.space.experts)]):
            if name in done or name in (n for n, _ in self.source_of.values()):
                continue
            recipe = recipe_from_dict({"merge_method": "linear",
                                       "models": [{"model": name, "parameters": {"weight": 1.0}}]})
            index = -1 - k
            self.source_of[index] = (name, role)
            self.source_jobs.append(Job(index, 1, recipe.canonical_json(), self.space.seed, self.opts.deadline_s))

    def _record_source(self, index: int, result: EvalResult | None, error: str | None) -> None:
        name, role = self.source_of[index]
        if result is None:
            result = EvalResult(status=Status.FAILED, error=error or "worker lost")
        fitness = self._scalar(result.objectives)
        self.store.record_source(self.lease, name, role, result, fitness=fitness)
        if result.status == Status.COMPLETE:
            self.log(f"source {name} ({role}) as it is: fitness {fitness}")
        else:
            self.log(f"source {name} ({role}) could not be scored: {result.error}")

    def _scalar(self, objectives: dict[str, float] | None) -> float | None:
        if objectives is None:
            return None
        total = 0.0
        for n, w in self.weights.items():
            v = objectives.get(n)
            if v is None or not np.isfinite(v):
                return None
            total += w * float(v)
        return total

    def _finished(self, row: CandidateRow) -> None:
        """``row``, as the store committed it, is terminal."""
        index = row.index
        self.rows[index] = row
        self.stats.completed += 1
        self._note_best(row)
        if self.opts.verbose:
            obj = ", ".join(f"{k} {v:.3f}" for k, v in (row.objectives or {}).items())
            self.log(f"candidate {index} ({row.recipe_id}) {row.status.lower()}"
                     + (f": fitness {row.fitness:.4f} [{obj}]" if row.fitness is not None else f": {row.error or ''}")
                     + f" in {row.seconds or 0:.2f} s")
        for later in self.waiting.pop(index, []):
            self._complete_cached(later, index)

    def _complete_cached(self, index: int, source: int) -> None:
        row = self.store.complete_cached(self.lease, index, source)
        self.rows[index] = row if row is not None else self.store.candidate(self.run_id, index)  # not PENDING
        self.stats.cached += 1

    def _note_best(self, row: CandidateRow) -> None:
        if row.status == Status.COMPLETE and row.fitness is not None and row.cached_from is None:
            if self.best is None or row.fitness > self.best[0]:
                self.best = (row.fitness, row.index)

    # ------------------------------------------------------------------ supervision
    def _supervise(self) -> None:
        now = time.monotonic()
        if now - self._last_renew > self.opts.lease_ttl_s / 3:
            self.lease = self.store.renew_lease(self.lease, self.opts.lease_ttl_s)
            self._last_renew = now
        if self.opts.deadline_s is not None:  # hard deadline: end the slot, record a timeout
            for index, (job, started) in list(self.backend.running().items()):
                if now - started > self.opts.deadline_s + self.opts.slack_s:
                    self.backend.kill(index)
                    res = EvalResult(status=Status.TIMEOUT, seconds=now - started,
                                     error=f"no result within the {self.opts.deadline_s:.0f} s deadline "
                                           f"+ {self.opts.slack_s:.0f} s slack; worker replaced")
                    if index < 0:
                        self._record_source(index, res, None)
                        continue
                    row = self.store.complete(self.lease, index, job.attempt, res, fitness=None)
                    if row is not None:
                        self._finished(row)
        if now - self._last_supervise < self.opts.supervise_s:
            return
        self._last_supervise = now
        for index in self.store.requeue_stale(self.lease, self.opts.grace_s):
            self.log(f"candidate {index}: no heartbeat for {self.opts.grace_s:.0f} s; requeued (a late result "
                     "from the silent worker will be refused)")
            self.backend.kill(index)
            self.stats.failed_attempts += 1
            self.queue.insert(0, index)

    def _stop_in_flight(self, outcomes: list[Outcome]) -> None:
        """On a stop request: record the results already received, end the running slots and put
        their candidates back to PENDING (a result arriving later is refused by attempt)."""
        with self.store.unit(self.lease):
            for out in outcomes:
                self._record(out)
        running = sorted(self.backend.running())
        for index in running:
            self.backend.kill(index)
        requeued = self.store.requeue_running(self.lease)
        self.log(f"{self.stop_requested}: stopping; {len(requeued)} running candidate(s) put back to PENDING")

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        self.queue = sorted(i for i, r in self.rows.items() if r.status == Status.PENDING)
        for i in sorted(self.rows):  # duplicates of a recipe that was unfinished at the crash
            r = self.rows[i]
            first = self.first_with[r.recipe_id]
            if r.status == Status.PENDING and first != i:
                self.queue.remove(i)
                if self.rows[first].status.terminal:
                    self._complete_cached(i, first)
                else:
                    self.waiting.setdefault(first, []).append(i)
        resumed = bool(self.rows)
        self._replaying = resumed
        self._ask_more()
        self._tell_ready()  # on resume this replays every committed result into the strategy
        self._replaying = False
        if resumed:
            self.log(f"resumed: replayed {self.told} committed results into the strategy")
            self.check_snapshot()
            self._snapshot()
        if self.told < self.budget:
            self._queue_sources()
        try:
            outcomes: list[Outcome] = []
            while self.told < self.budget and not self.stop_requested:
                t0 = time.perf_counter()
                self._step(outcomes)
                self._supervise()
                t1 = time.perf_counter()
                outcomes = self.backend.poll(self.opts.poll_s)
                self.stats.driver_s += t1 - t0
                if self.on_progress:
                    self.on_progress(self)
                if not self.queue and not self.backend.running() and self.told < self.budget:
                    row = self.rows.get(self.told)
                    if row is None or not row.status.terminal:
                        if self.strategy_asked <= self.told:
                            self.log(f"stopping after {self.told} candidates: the strategy has nothing to ask "
                                     "(too few candidates succeeded; see the errors with `evomerge show`)")
                            break
            if self.stop_requested:
                self._stop_in_flight(outcomes)
        except StaleLeaseError:
            self.log("another driver took over this run; stopping without further writes")
            raise


def _recipe_format(row: Any) -> int | None:
    """The recipe format of a stored candidate (None for a row without its recipe)."""
    import json

    from evomerge.recipe import stored_recipe

    text = getattr(row, "recipe_json", None)
    return stored_recipe(json.loads(text)).recipe_format if text else None
