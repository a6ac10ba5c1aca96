"""Commands of the service: search, resume, and the archive queries (each with --json)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from evomerge.cli_base import Col, app, console, db_app, local_time, logs_to_stderr, print_json, print_table
from evomerge.evaluate.registry import describe as describe_engines

if TYPE_CHECKING:
    from evomerge.api import ExecOptions

DB = Annotated[str | None, typer.Option("--db", help="archive URL (default sqlite:///./evomerge.db); "
                                        "postgresql+psycopg://user@host/db for clusters", envvar="EVOMERGE_DB")]
JSON = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
FIDELITY = Annotated[str | None, typer.Option(help="only candidates scored so: exact (every item), raced or subset "
                                                  "(estimated from an item subset)")]


class ProgressLine:
    """Generation, evaluations done / budget, best so far, rate, ETA, failures; every few seconds."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s, self.last, self.t0, self.last_told = every_s, 0.0, time.monotonic(), -1

    def __call__(self, d: Any) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s and d.told != d.budget:
            return
        if d.told == self.last_told and now - self.last < 6 * self.every_s:
            return
        self.last, self.last_told = now, d.told
        rate = d.stats.completed / max(now - self.t0, 1e-9)
        eta = (d.budget - d.told) / rate if rate > 0 else float("inf")
        gen = d.strategy.genomes[d.told - 1].generation if d.told else 0
        best = f"{d.best[0]:.4f} (#{d.best[1]})" if d.best else "-"
        eta_s = f"{int(eta // 60)}:{int(eta % 60):02d}" if eta != float("inf") else "-"
        console.print(f"[{d.told}/{d.budget}] generation {gen} | best {best} | {rate:.2f}/s | ETA {eta_s} | "
                      f"failed attempts {d.stats.failed_attempts} | cached {d.stats.cached}", highlight=False)


def _exec_options(workers: int, backend: str, address: str | None, cpus: float, gpus: float, verbose: bool,
                  grace: float, device_memory: str | None = None) -> ExecOptions:
    """The execution options of search and resume (checked when made: a bad one is an `error:` line)."""
    from evomerge.api import ExecOptions
    from evomerge.runner.placement import parse_bytes

    return ExecOptions(workers=workers, backend=backend, address=address, cpus_per_worker=cpus,
                       gpus_per_worker=gpus, verbose=verbose, grace_s=grace,
                       device_memory=None if device_memory is None else parse_bytes(device_memory))


def _log(message: str) -> None:
    console.print(message, highlight=False)


def _report(outcome: Any, db: str | None) -> None:
    from evomerge import api

    run = outcome.run
    console.print(f"run {run.name}: {run.status}, {outcome.told}/{run.budget} candidates in {outcome.seconds:.1f} s "
                  f"({', '.join(f'{k} {v}' for k, v in sorted(run.counts.items()))})")
    top = api.best(run.id, db=db)
    if top:
        b = top[0]
        console.print(f"best: {run.name}:{b['index']} fitness {b['fitness']:.4f} objectives "
                      f"{ {k: round(v, 4) for k, v in (b['objectives'] or {}).items()} }", highlight=False)
        console.print(f"next: evomerge show {run.name}:{b['index']} | evomerge export {run.name}:{b['index']} --out DIR"
                      f" | evomerge pareto {run.name}")
    if outcome.stopped_by:  # stopped by a signal: exit as a process ended by it would (128 + N)
        raise typer.Exit(128 + outcome.stopped_by)


Workers = Annotated[int, typer.Option(help="evaluation slots (one Ray actor each)")]
Backend = Annotated[str, typer.Option(help="ray (actors; local Ray unless --address) or local (in this process)")]
Address = Annotated[str | None, typer.Option(help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)",
                                             envvar="RAY_ADDRESS")]
Cpus = Annotated[float, typer.Option(help="CPUs per worker actor")]
Gpus = Annotated[float, typer.Option(help="GPUs per worker actor")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="a log line per candidate")]
Grace = Annotated[float, typer.Option(help="seconds a running candidate may go without a worker heartbeat before "
                                           "it is requeued (a worker's start-up never counts)")]


@app.command("search")
def search(
    space_path: Annotated[Path, typer.Option("--space", help="search space YAML")],
    db: DB = None,
    name: Annotated[str | None, typer.Option(help="run name (default <space>-s<seed>-<n>)")] = None,
    budget: Annotated[int | None, typer.Option(help="override the space's budget")] = None,
    seed: Annotated[int | None, typer.Option(help="override the space's seed")] = None,
    strategy: Annotated[str | None, typer.Option(help="override the space's strategy: cmaes, nevergrad, m2n2, random")] = None,
    optimizer: Annotated[str | None, typer.Option(help="override the nevergrad optimizer (NGOpt, TwoPointsDE, ...)")] = None,
    engine: Annotated[str, typer.Option(help=describe_engines())] = "hf",
    workers: Workers = 1,
    backend: Backend = "ray",
    address: Address = None,
    deadline: Annotated[float | None, typer.Option(help="seconds per candidate before it times out")] = None,
    max_attempts: Annotated[int, typer.Option(help="attempts per candidate when workers die")] = 3,
    snapshot_every: Annotated[int, typer.Option(help="tells between strategy snapshots")] = 50,
    cpus_per_worker: Cpus = 1.0,
    gpus_per_worker: Gpus = 0.0,
    device_memory: Annotated[str | None, typer.Option(
        help="memory per GPU (80GiB, 141GB): plan where workers keep the sources; refuse a run that "
             "cannot fit before it starts")] = None,
    grace: Grace = 60.0,
    verbose: Verbose = False,
    reference_sources: Annotated[bool, typer.Option(help="also score the base and each expert once, as they are "
                                                         "(reference points for the dashboard; outside the budget)")]
    = True,
) -> None:
    """Search a space: every candidate goes to the archive; resumable with `evomerge resume RUN`."""
    from evomerge import api

    options = api.SearchOptions(budget=budget, seed=seed, strategy=strategy, optimizer=optimizer, engine=engine,
                                deadline_s=deadline, max_attempts=max_attempts, snapshot_every=snapshot_every,
                                name=name, reference_sources=reference_sources)  # checked first, then the execution options
    execution = _exec_options(workers, backend, address, cpus_per_worker, gpus_per_worker, verbose, grace,
                              device_memory)
    outcome = api.search(space_path, options, execution, db=db, log=_log, progress=ProgressLine())
    _report(outcome, db)


@app.command("resume")
def resume(
    run: Annotated[str, typer.Argument(help="run name or id")],
    db: DB = None,
    workers: Workers = 1,
    backend: Backend = "ray",
    address: Address = None,
    cpus_per_worker: Cpus = 1.0,
    gpus_per_worker: Gpus = 0.0,
    grace: Grace = 60.0,
    verbose: Verbose = False,
) -> None:
    """Continue a crashed or stopped run (PENDING and RUNNING candidates are dispatched again)."""
    from evomerge import api

    execution = _exec_options(workers, backend, address, cpus_per_worker, gpus_per_worker, verbose, grace)
    outcome = api.resume(run, execution, db=db, log=_log, progress=ProgressLine())
    _report(outcome, db)


@app.command("runs")
def runs(db: DB = None, as_json: JSON = False) -> None:
    """List the runs in the archive (times in local time; ISO 8601 with offset in --json)."""
    from evomerge import api

    with logs_to_stderr(as_json):
        rows = api.runs(db)
    if as_json:
        print_json(rows)
        return
    cols = [Col("name", wrap=True), Col("id"), Col("status"), Col("kind"), Col("strategy"),
            Col("engine"), Col("done/budget", short="done"), Col("created", wrap=True)]
    table = []
    for r in rows:
        done = sum(v for k, v in r["counts"].items() if k not in ("PENDING", "RUNNING"))
        table.append([r["name"], r["id"], r["status"], str(r["kind"]), str(r["strategy"]), str(r["engine"]),
                      f"{done}/{r['budget']}", local_time(r["created_at"])])
    print_table(cols, table)


def _fidelity(r: dict) -> str:
    """``exact``, or ``raced n`` (the items a raced-out candidate was scored on)."""
    return "exact" if r["fidelity"] == "exact" else f"{r['fidelity']} {r['items_scored']}"


def _candidates_table(rows: list[dict], title: str) -> None:
    """Index, fitness, every objective by name, fidelity (when a candidate was raced out),
    generation, parents, recipe id; objective names stay whole (o1, o2, ... with a legend only when the terminal is too narrow for them)."""
    names = list(rows[0]["objectives"] or {}) if rows else []
    raced = any(r["fidelity"] != "exact" for r in rows)  # the column only when there is something to tell
    cols = [Col("index", numeric=True), Col("fitness", numeric=True),
            *[Col(n, numeric=True, short=f"o{j + 1}") for j, n in enumerate(names)],
            *([Col("fidelity", short="fid")] if raced else []), Col("generation", numeric=True, short="gen"),
            Col("parents", wrap=True), Col("recipe_id", wrap=True)]
    table = []
    for r in rows:
        obj = r["objectives"] or {}
        table.append([str(r["index"]), f"{r['fitness']:.4f}" if r["fitness"] is not None else "-",
                      *[f"{obj[n]:.4f}" if obj.get(n) is not None else "-" for n in names],
                      *([_fidelity(r)] if raced else []), str(r["generation"]),
                      ",".join(map(str, r["parents"])) or "-", r["recipe_id"]])
    print_table(cols, table, title=title)


@app.command("best")
def best(
    run: Annotated[str, typer.Argument(help="run name or id")],
    objective: Annotated[str | None, typer.Option(help="rank by this objective instead of the weighted fitness")] = None,
    k: Annotated[int, typer.Option("-k", help="how many")] = 1,
    fidelity: FIDELITY = None,
    db: DB = None,
    as_json: JSON = False,
) -> None:
    """The best candidates of a run (by weighted fitness, or by one objective)."""
    from evomerge import api

    with logs_to_stderr(as_json):
        rows = api.best(run, objective=objective, k=k, db=db, fidelity=fidelity)
    if as_json:
        print_json(rows)
    else:
        _candidates_table(rows, f"best of {run}" + (f" by {objective}" if objective else ""))


@app.command("pareto")
def pareto(run: Annotated[str, typer.Argument(help="run name or id")], fidelity: FIDELITY = None, db: DB = None,
           as_json: JSON = False) -> None:
    """The Pareto front of a run over all its objectives (failed and invalid candidates never enter)."""
    from evomerge import api

    with logs_to_stderr(as_json):
        rows = api.pareto(run, db=db, fidelity=fidelity)
    if as_json:
        print_json(rows)
    else:
        _candidates_table(rows, f"Pareto front of {run}: {len(rows)} candidates")


@app.command("show")
def show(candidate: Annotated[str, typer.Argument(help="RUN:INDEX")], db: DB = None, as_json: JSON = False) -> None:
    """One candidate: recipe (mergekit YAML), objectives, status, times, attempts and lineage."""
    from rich.markup import escape

    from evomerge import api
    from evomerge.recipe import stored_recipe

    with logs_to_stderr(as_json):
        d = api.show(candidate, db=db)
    if as_json:
        print_json(d)
        return
    # stored text (errors, worker names, model paths) is printed as text, never as rich markup
    console.print(f"[bold]{escape(d['run'])}:{d['index']}[/] {d['status']} (generation {d['generation']}, "
                  f"{d['attempts']} attempt(s), {d['seconds'] or 0:.2f} s, worker {escape(str(d['worker']))})")
    console.print(f"started {local_time(d['started_at'])}, finished {local_time(d['finished_at'])}", highlight=False)
    if d["error"]:
        console.print(f"error: {d['error']}", highlight=False, markup=False)
    if d["cached_from"] is not None:
        console.print(f"same recipe as candidate {d['cached_from']}: its result was reused")
    console.print(f"fitness {d['fitness']}; objectives {d['objectives']}", highlight=False, markup=False)
    if d["fidelity"] != "exact":
        console.print(f"{d['fidelity']}: scored on {d['items_scored']} items (reference candidate {d['race_ref']}); "
                      f"intervals {d['intervals']}; {d['stop_reason']}", highlight=False, markup=False)
    lin = d["lineage"]
    console.print(f"parents {d['parents'] or '-'}; ancestors "
                  f"{[(a['index'], a['level']) for a in lin['ancestors']] or '-'}; children {lin['children'] or '-'}",
                  markup=False)
    console.print(stored_recipe(d["recipe"]).to_yaml(), highlight=False, markup=False)


@app.command("export")
def export(
    candidate: Annotated[str, typer.Argument(help="RUN:INDEX")],
    out: Annotated[Path, typer.Option("--out", help="new model directory")],
    overwrite: Annotated[bool, typer.Option(
        help="replace an existing directory that evomerge wrote (anything else is refused)")] = False,
    any_status: Annotated[bool, typer.Option(
        "--any-status", help="also export a FAILED, INVALID, TIMEOUT, PENDING or RUNNING candidate")] = False,
    db: DB = None,
    as_json: JSON = False,
) -> None:
    """Write a COMPLETE candidate as a Hugging Face model directory plus its mergekit YAML (atomically)."""
    from evomerge import api

    with logs_to_stderr(as_json):
        path = api.export(candidate, out, db=db, overwrite=overwrite, any_status=any_status)
    if as_json:
        print_json({"candidate": candidate, "out": str(path), "mergekit_config": str(path / "mergekit_config.yml")})
    else:
        console.print(f"exported {candidate} to {path} (mergekit config: {path / 'mergekit_config.yml'})")


@app.command("plot")
def plot(
    run: Annotated[str, typer.Argument(help="run name or id")],
    out: Annotated[Path, typer.Option("--out", help="PNG file")] = Path("evomerge-plot.png"),
    db: DB = None,
    as_json: JSON = False,
) -> None:
    """Fitness over evaluations and the Pareto front (first two objectives) as a PNG."""
    from evomerge.plot import plot_run

    with logs_to_stderr(as_json):
        path = plot_run(run, out, db=db)
    if as_json:
        print_json({"run": run, "out": str(path)}, indent=None)
    else:
        console.print(f"wrote {path}")


@db_app.command("upgrade")
def db_upgrade(db: DB = None) -> None:
    """Migrate the archive's schema to this version of evomerge (Alembic). An archive at a schema
    this evomerge does not know (written by a newer one) is refused, untouched."""
    from evomerge.store import default_url, upgrade
    from evomerge.store.schema import shown_url

    url = db or default_url(Path.cwd())
    before, now = upgrade(url)
    if before == now:
        console.print(f"{shown_url(url)}: schema {now} is current; nothing to do", highlight=False)
    elif before is None:
        console.print(f"{shown_url(url)}: new archive created at schema {now}", highlight=False)
    else:
        console.print(f"{shown_url(url)}: upgraded from schema {before} to {now}", highlight=False)
