"""How a run executes (:class:`ExecOptions`), checked when made: each option refused, named, with
its allowed range. Kept light (no driver, no strategies) so the API and the CLI can build one
before anything heavy is imported."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from evomerge.errors import ConfigError

# Limits of the execution options (each refused with the option named and this range)
MAX_WORKERS = 4096
BACKENDS = ("ray", "local")


def check_int(option: str, value: int, low: int, high: int) -> None:
    """``value`` must be a whole number (not a bool) from ``low`` to ``high``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise ConfigError(f"{option} {value!r} is out of range: it must be a whole number from {low} "
                          f"to {high}",
                          hint=f"pass {option} between {low} and {high}")


def check_float(option: str, value: float, *, positive: bool = False, hint: str | None = None) -> None:
    """``value`` must be a finite number, above 0 when ``positive``, else at least 0."""
    bound = "above 0" if positive else "0 or more"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and (
        value > 0 if positive else value >= 0)
    if not ok:
        raise ConfigError(f"{option} {value!r} is out of range: it must be a finite number {bound}",
                          hint=hint or f"pass {option} with a finite value {bound}")


def check_exec_options(*, workers: int, backend: str, cpus_per_worker: float, gpus_per_worker: float,
                       grace_s: float = 60.0, heartbeat_s: float = 5.0) -> None:
    """How a run executes (``search`` and ``resume``; what :class:`ExecOptions` checks when made):
    1 to MAX_WORKERS evaluation slots, a known backend, finite non-negative CPUs and GPUs per worker
    (on Ray, amounts above 1 are whole numbers), a grace period and heartbeat interval above 0."""
    check_int("--workers", workers, 1, MAX_WORKERS)
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}",
                          hint="use ray (worker actors) or local (evaluate in this process)")
    for option, amount in (("--cpus-per-worker", cpus_per_worker), ("--gpus-per-worker", gpus_per_worker)):
        check_float(option, amount)
        if backend == "ray" and amount > 1 and amount != int(amount):
            raise ConfigError(f"{option} {amount} is not allowed: Ray needs amounts above 1 to be whole "
                              "numbers",
                              hint=f"pass {option} as a fraction up to 1 or a whole number")
    check_float("grace_s", grace_s, positive=True)
    check_float("heartbeat_s", heartbeat_s, positive=True)


@dataclass(frozen=True)
class ExecOptions:
    """How to run (may differ between start and resume; none of it changes the results). Checked
    when made (:func:`check_exec_options`): a bad option is a ConfigError naming it and its range."""

    workers: int = 1  # evaluation slots (one Ray actor each)
    backend: str = "ray"  # ray | local
    address: str | None = None  # Ray cluster address (default: RAY_ADDRESS, else a local Ray)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    verbose: bool = False  # a log line per candidate
    lease_ttl_s: float = 60.0
    grace_s: float = 60.0  # seconds a running candidate may go without a heartbeat before it is requeued
    heartbeat_s: float = 5.0  # seconds between a worker's heartbeats while it evaluates
    device_memory: int | None = None  # bytes per GPU: plan where sources go, refuse what cannot fit (placement)

    def __post_init__(self) -> None:
        check_exec_options(workers=self.workers, backend=self.backend, cpus_per_worker=self.cpus_per_worker,
                           gpus_per_worker=self.gpus_per_worker, grace_s=self.grace_s, heartbeat_s=self.heartbeat_s)
        if self.device_memory is not None and (self.device_memory <= 0 or self.gpus_per_worker <= 0):
            raise ConfigError(f"--device-memory {self.device_memory} needs GPUs and a size above 0",
                              hint="pass --gpus-per-worker 1 or more with --device-memory, e.g. 80GiB")
