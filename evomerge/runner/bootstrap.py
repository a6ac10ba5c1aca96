"""The Ray actor class that makes its worker process import the driver's evomerge.

Ray puts the driver's working directory (and its script's directory) first on every worker's
``sys.path`` (ray/_private/worker.py, ``_py_driver_sys_path``), so a search started from a
directory that holds another evomerge (a source checkout, an older copy) would run that code in
its workers: another C++ kernel build per worker, other merge semantics. This class travels to
the worker by value (cloudpickle), not by import, and imports nothing of evomerge at module
level; its ``__init__`` puts the driver's package root first on ``sys.path`` before evomerge is
imported there, then builds the real :class:`evomerge.runner.worker.CandidateWorker`. The spec
comes as a plain dict for the same reason (a dataclass would be unpickled by importing its module
first). Where the driver's path does not exist (another node), the worker imports what is
installed, and the code fingerprint check refuses a mismatch.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evomerge.evaluate.base import ItemPlan
    from evomerge.result import EvalResult


class WorkerShell:
    """A :class:`CandidateWorker` behind a ``sys.path`` fix; the same methods."""

    def __init__(self, package_root: str, spec: dict[str, Any], defer_errors: bool = True) -> None:
        if package_root in sys.path:
            sys.path.remove(package_root)
        sys.path.insert(0, package_root)
        for name in [m for m in sys.modules if m == "evomerge" or m.startswith("evomerge.")]:
            del sys.modules[name]  # nothing may have come from the shadowing copy
        from evomerge.runner.worker import CandidateWorker, WorkerSpec

        fields = dict(spec)
        fields["tasks"], fields["sources"] = tuple(fields["tasks"]), tuple(fields["sources"])
        self.worker = CandidateWorker(WorkerSpec(**fields), defer_errors=defer_errors)

    def ready(self) -> dict[str, Any]:
        return self.worker.ready()

    def ping(self) -> str:
        return self.worker.ping()

    def evaluate(self, index: int, attempt: int, recipe_json: str, seed: int,
                 deadline_s: float | None = None, plan: ItemPlan | None = None) -> EvalResult:
        return self.worker.evaluate(index, attempt, recipe_json, seed, deadline_s, plan)

    def close(self) -> None:
        self.worker.close()
