"""A search in this process with a given evaluator, archived in a temporary SQLite file:
the driver's loop (same pacing, caching, failure handling) for benchmarks and tests that want
the records back as a list rather than a run in an archive."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evomerge.space.schema import SearchSpace


@dataclass
class SearchResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    objective_names: list[str] = field(default_factory=list)
    directions: list[str] = field(default_factory=list)

    def pareto(self) -> list[dict[str, Any]]:
        """The non-dominated candidates over all objectives (failed ones and copies never enter)."""
        import numpy as np

        from evomerge.pareto import pareto_front

        ok = [r for r in self.records if r["objectives"] is not None and not r["cached"]]
        if not ok:
            return []
        values = np.array([[r["objectives"][n] for n in self.objective_names] for r in ok])
        return [ok[i] for i in pareto_front(values, self.directions)]

    def best(self) -> dict[str, Any] | None:
        ok = [r for r in self.records if r["fitness"] is not None]
        return max(ok, key=lambda r: r["fitness"]) if ok else None


def run_search(space: SearchSpace, *, evaluator: Any = None, out: Path | None = None,
               log: Callable[[str], None] = print, lag: int = 1) -> SearchResult:
    """Drive ``space`` to its budget with ``evaluator`` (default: transformers, in place) in this
    process; ``out`` also writes the records as JSON lines.

    SIGTERM or SIGINT stops the run cleanly after the running candidate and raises
    :class:`~evomerge.errors.SearchInterrupted` (its ``result`` holds the records so far, also
    written to ``out``): the archive is temporary, so a partial result is never returned as if
    the budget had been spent."""
    from evomerge.errors import SearchInterrupted
    from evomerge.runner.backend import LocalBackend
    from evomerge.runner.service import ExecOptions, create_run, execute
    from evomerge.runner.worker import WorkerSpec
    from evomerge.store import Store

    with tempfile.TemporaryDirectory(prefix="evomerge-local-") as d:
        with Store.open(f"sqlite:///{Path(d) / 'search.db'}") as store:
            run = create_run(store, space, "", name="local", engine="hf", lag=lag, max_attempts=1, deadline_s=None,
                             strategy_workers=1)

            def backend(spec: WorkerSpec) -> LocalBackend:
                return LocalBackend(spec, evaluator=evaluator)

            outcome = execute(store, run, ExecOptions(backend="local"), log=log, backend_factory=backend)
            rows = store.candidates(run.id, with_scores=True)
            names = [o["name"] for o in run.objectives]
    result = SearchResult(objective_names=names, directions=[o.direction for o in space.objectives])
    for r in rows:
        result.records.append({
            "index": r.index, "generation": r.generation, "recipe_id": r.recipe_id,
            "recipe": json.loads(r.recipe_json), "genome": r.genome, "status": str(r.status),
            "objectives": r.objectives, "fitness": r.fitness, "error": r.error, "cached": r.cached_from is not None,
            "seconds": r.seconds, "item_scores": r.item_scores, "fidelity": str(r.fidelity),
            "items_scored": r.items_scored, "stop_reason": r.stop_reason})
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(rec) + "\n" for rec in result.records), encoding="utf-8")
    if outcome.stopped_by is not None:
        import signal

        raise SearchInterrupted(
            f"the local search was stopped by {signal.Signals(outcome.stopped_by).name} after "
            f"{sum(r['status'] != 'PENDING' for r in result.records)} of {space.budget} candidates", result=result,
            hint="its archive was temporary: run it again (or use `evomerge search`, which can resume)")
    return result
