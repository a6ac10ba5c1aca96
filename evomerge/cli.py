"""The ``evomerge`` command line.

Every :class:`~evomerge.errors.EvomergeError` is printed as its message and fix, with exit
status 2, never as a traceback.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from evomerge.errors import EvomergeError
from evomerge.evaluate.registry import MODEL_ENGINES
from evomerge.evaluate.registry import describe as describe_engines

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from evomerge import cli_runs  # noqa: E402,F401 - registers search/resume/runs/best/pareto/show/export/plot/db
from evomerge.cli_base import (  # noqa: E402
    Col,
    app,
    console,
    err_console,
    logs_to_stderr,
    print_json,
    print_table,
    seal_stdout,
    zoo_app,
)


@zoo_app.command("build")
def zoo_build(
    out: Annotated[Path, typer.Argument(help="directory to create")],
    overwrite: Annotated[bool, typer.Option(
        help="replace an existing zoo that evomerge built (anything else is refused)")] = False,
    seed: Annotated[int, typer.Option(help="training seed")] = 0,
    size: Annotated[str | None, typer.Option(
        help="an untrained scaled size for speed benchmarks (tiny, 10m, 100m): random base + synthetic experts")] = None,
    experts: Annotated[int, typer.Option(help="number of experts of a scaled size")] = 3,
) -> None:
    """Train the tiny base + experts (about 2-4 minutes on 2 CPU cores), or write a scaled size."""
    if size is not None:
        from evomerge.zoo_scaled import build_scaled_zoo

        manifest = build_scaled_zoo(out, size, experts=experts, seed=seed, overwrite=overwrite, log=console.print)
        console.print(f"{manifest['parameters'] / 1e6:.1f}M parameters per model, {len(manifest['models'])} models, "
                      f"built in {manifest['build_seconds']} s")
        return
    from evomerge.zoo import ZooSpec, build_zoo

    manifest = build_zoo(out, ZooSpec(seed=seed), overwrite=overwrite)
    _print_accuracy(manifest["accuracy"], manifest["skills"], title=f"zoo {out} (exact match, 200 test items)")
    console.print(f"built in {manifest['build_seconds']} s")


@zoo_app.command("eval")
def zoo_eval(
    models: Annotated[list[Path], typer.Argument(help="model directories to score on the zoo skills")],
    n: Annotated[int, typer.Option(help="items per skill")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Score model directories on the zoo's skills (greedy exact match)."""
    from evomerge.hfmodel import load_hf_model
    from evomerge.zoo import ZooSpec, skill_accuracy, vocab

    skills = list(ZooSpec().experts)
    scores = {}
    with logs_to_stderr(as_json):
        for path in models:
            model = load_hf_model(path)
            scores[str(path)] = {s: skill_accuracy(model, s, vocab(), n=n) for s in skills}
    if as_json:
        print_json(scores, indent=2)
    else:
        _print_accuracy(scores, skills, title=f"zoo skills (exact match, {n} test items)")


def _print_accuracy(scores: dict[str, dict[str, float]], skills: list[str], title: str) -> None:
    table = Table(title=title)
    table.add_column("model")
    for s in skills:
        table.add_column(s, justify="right")
    table.add_column("mean", justify="right")
    for name, row in scores.items():
        vals = [row[s] for s in skills]
        table.add_row(name, *(f"{v:.2f}" for v in vals), f"{sum(vals) / len(vals):.3f}")
    console.print(table)


@app.command("merge")
def merge(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML (mergekit-style)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output model directory")],
    overwrite: Annotated[bool, typer.Option(
        help="replace an existing output directory that evomerge wrote (anything else is refused)")] = False,
    seed: Annotated[int, typer.Option(help="seed for stochastic ops (DARE)")] = 0,
    shard_mb: Annotated[int, typer.Option(help="maximum safetensors shard size in MiB")] = 2048,
) -> None:
    """Materialize a recipe into a Hugging Face model directory, tensor by tensor."""
    from evomerge.merge.materialize import merge_to_dir
    from evomerge.recipe import load_recipe

    rec = load_recipe(recipe).resolved(recipe.resolve().parent)
    t0 = time.perf_counter()
    report = merge_to_dir(rec, out, seed=seed, overwrite=overwrite, max_shard_bytes=shard_mb * 2**20)
    dt = time.perf_counter() - t0
    console.print(
        f"merged {report.tensors} tensors ({report.bytes_written / 2**20:.1f} MiB) with "
        f"{rec.merge_method} into {out} in {dt:.2f} s; recipe {report.recipe_id}"
    )


@app.command("eval")
def eval_cmd(
    target: Annotated[Path, typer.Argument(help="a recipe YAML or a model directory")],
    task: Annotated[list[Path] | None, typer.Option("--task", "-t", help="task spec YAML (repeatable)")] = None,
    space: Annotated[Path | None, typer.Option(help="score the objectives of this search space (lm-eval ones "
                                                     "included; --split heldout: their held-out splits)")] = None,
    engine: Annotated[str, typer.Option(help=describe_engines(MODEL_ENGINES))] = "hf",
    split: Annotated[str, typer.Option(help="search, heldout or both")] = "search",
    deadline: Annotated[float | None, typer.Option(help="seconds before the evaluation times out")] = None,
    seed: Annotated[int, typer.Option(help="seed for stochastic merge ops")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (with per-item scores)")] = False,
) -> None:
    """Score a recipe (materialized in memory) or a model directory on fitness tasks."""
    from evomerge.errors import ConfigError
    from evomerge.evaluate.registry import REGISTRY, check_engine, make_evaluator
    from evomerge.evaluate.tasks import load_task
    from evomerge.recipe import load_recipe, recipe_from_dict

    if split not in ("search", "heldout", "both"):
        raise ConfigError(f"--split {split!r} is not one of search, heldout, both",
                          hint="pass --split search (the task's data), heldout, or both")
    # the engines that score a model's weights (not synthetic, which reads only the recipe's numbers)
    check_engine(engine, among=MODEL_ENGINES,
                 hint=f"pass {' or '.join(f'--engine {REGISTRY[e].describe()}' for e in MODEL_ENGINES)}")
    if target.is_dir():
        recipe = recipe_from_dict({"merge_method": "linear",
                                  "models": [{"model": str(target.resolve()), "parameters": {"weight": 1.0}}]})
    else:
        recipe = load_recipe(target).resolved(target.resolve().parent)
    splits = ["search", "heldout"] if split == "both" else [split]
    refs: list[str | Path] = list(task or [])
    if space is not None:
        from evomerge.space.schema import load_space

        refs += [o.ref for o in load_space(space).objectives]
    if not refs:
        raise ConfigError("nothing to score", hint="pass --task SPEC.yaml (repeatable) or --space SPACE.yaml")
    tasks = [load_task(t, split=sp) for t in refs for sp in splits]
    results = {}
    # the engines' own output (vLLM's log lines, from this process and its engine process) goes to
    # stderr, so that stdout holds the table, or exactly one JSON document
    with logs_to_stderr():
        evaluator = make_evaluator(engine)
        try:
            for sp in splits:
                res = evaluator.evaluate(recipe, [t for t in tasks if t.split == sp], deadline_s=deadline, seed=seed)
                results[sp] = res
        finally:
            close = getattr(evaluator, "close", None)
            if close is not None:
                close()  # the engine stops now, while its shutdown logs still go to stderr
    if as_json:
        print_json({sp: {"status": r.status, "objectives": r.objectives, "error": r.error, "seconds": r.seconds,
                         "phases": r.phases, "tokens": r.tokens, "item_scores": r.item_scores} for sp, r in results.items()}, indent=None)
        return
    names = list(dict.fromkeys(t.name for t in tasks))
    rows = [[name, *(f"{results[sp].objectives[name]:.4f}" if results[sp].objectives else results[sp].status
                     for sp in splits)] for name in names]
    print_table([Col("task", wrap=True), *(Col(sp, numeric=True) for sp in splits)], rows,
                title=f"{target} ({engine}, recipe {recipe.recipe_id})")
    for sp, r in results.items():
        timing = ", ".join(f"{k} {v:.2f} s" for k, v in r.phases.items())
        console.print(f"{sp}: {r.status}{' (' + r.error + ')' if r.error else ''}; {r.items} items, {r.tokens} tokens; "
                      f"{timing}", highlight=False)


@app.command("validate")
def validate(spaces: Annotated[list[Path], typer.Argument(help="search space YAML files")],
             gpus_per_worker: Annotated[float, typer.Option(help="GPUs per worker (with --device-memory)")] = 0.0,
             device_memory: Annotated[str | None, typer.Option(
                 help="memory per GPU (80GiB, 141GB): print where a worker keeps the sources and refuse "
                      "a run that cannot fit")] = None) -> None:
    """Check search spaces without running anything: schema, bounds and sizes, task specs and their
    data, and (when the models exist) source headers, the start recipe's plan and the strategy.
    Every file is checked; each bad one gets an `error:` line naming it; exit status 2 if any is bad."""
    from evomerge import api
    from evomerge.runner.placement import parse_bytes

    bad = 0
    for path in spaces:
        try:
            d = api.validate(path, gpus_per_worker=gpus_per_worker,
                             device_memory=None if device_memory is None else parse_bytes(device_memory))
        except EvomergeError as err:
            bad += 1
            where = "" if err.message.startswith(str(path)) else f"{path}: "
            err_console.print("[bold red]error:[/]", escape(f"{where}{err.message}"), highlight=False,
                              soft_wrap=True)
            if err.hint:
                err_console.print("  [bold]fix:[/]", escape(err.hint), highlight=False, soft_wrap=True)
            continue
        if d["genes"] is not None:
            genes = f", {d['genes']} genes"
        elif d["zoo_unbuilt"]:
            genes = ", sources not checked (the built-in zoo is not built yet; the first search builds it)"
        else:
            genes = f", sources not checked ({len(d['missing'])} model paths not found, e.g. {d['missing'][0]})"
        console.print(f"{path}: ok ({d['kind']}, {d['what']}, {d['experts']} experts, "
                      f"{d['objectives']} objectives{genes}, budget {d['budget']}, hash {d['hash']})",
                      markup=False, highlight=False, soft_wrap=True)  # one line per file, whatever the width
        if d["placement"]:
            console.print(f"{path}: placement: {d['placement']}", markup=False, highlight=False, soft_wrap=True)
    if bad:
        raise typer.Exit(2)


@app.command("import-evolve")
def import_evolve_cmd(
    config: Annotated[Path, typer.Argument(help="a mergekit-evolve config (evol_merge_config.yml)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the evomerge search space to write")],
    max_fevals: Annotated[int, typer.Option(help="mergekit-evolve's --max-fevals: the budget")] = 100,
    sigma0: Annotated[float, typer.Option(help="mergekit-evolve's --sigma0 (in weight units)")] = 1 / 6,
    random_seed: Annotated[int, typer.Option(help="mergekit-evolve's --random-seed: the run seed")] = 0,
    force_population_size: Annotated[int | None, typer.Option(help="mergekit-evolve's --force-population-size")] = None,
    task_search_path: Annotated[list[Path] | None, typer.Option(
        help="mergekit-evolve's --task-search-path: directories of lm-eval task YAMLs (repeatable)")] = None,
    weight_bound: Annotated[float, typer.Option(help="weights are searched in [0, B] ([-B, B] with "
                                                     "allow_negative_weights)")] = 1.0,
    name: Annotated[str | None, typer.Option(help="the space's name (default: the config file's stem)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out file")] = False,
) -> None:
    """Turn a mergekit-evolve genome config into an evomerge search space over the same genome."""
    from evomerge.errors import ConfigError
    from evomerge.space.evolve_import import import_evolve
    from evomerge.space.schema import load_space

    if out.exists() and not overwrite:
        raise ConfigError(f"{out} exists", hint="pass --overwrite to replace it, or choose another --out")
    if weight_bound <= 0 or sigma0 <= 0 or max_fevals < 1:
        raise ConfigError("--weight-bound and --sigma0 must be positive and --max-fevals at least 1",
                          hint="e.g. --weight-bound 1 --sigma0 0.1667 --max-fevals 100")
    space = import_evolve(config, max_fevals=max_fevals, sigma0=sigma0, seed=random_seed,
                          popsize=force_population_size, weight_bound=weight_bound, name=name,
                          task_search_paths=list(task_search_path or []))
    import yaml

    text = f"# imported from {config} by `evomerge import-evolve`\n" + yaml.safe_dump(space, sort_keys=False)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # validated first, then renamed over --out
    tmp.write_text(text)
    try:
        load_space(tmp)  # the written space validates (bounds, methods, lm-eval fields); its paths are absolute
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    console.print(f"wrote {out}: {space['merge_method']} over {len(space['experts'])} models, "
                  f"{space['layer_groups']} layer group(s), {len(space['objectives'])} lm-eval task(s), "
                  f"budget {space['budget']}; next: evomerge validate {out}", markup=False, highlight=False,
                  soft_wrap=True)


@app.command("generate")
def generate(
    model: Annotated[Path, typer.Argument(help="model directory")],
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="prompt (repeatable)")],
    max_new_tokens: Annotated[int, typer.Option(help="tokens to generate")] = 16,
) -> None:
    """Greedy generation with transformers (a quick check that a merged model works)."""
    import torch

    from evomerge.hfmodel import load_hf_model, load_hf_tokenizer

    tok = load_hf_tokenizer(model)
    mdl = load_hf_model(model)
    for p in prompt:
        enc = tok(p, return_tensors="pt")
        with torch.no_grad():
            out = mdl.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                               pad_token_id=tok.pad_token_id)
        text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        console.print(f"{p!r} -> {text!r}")


@app.command("demo")
def demo(
    workdir: Annotated[Path, typer.Option(help="where the zoo, recipes and merged models go")] = Path("evomerge-demo"),
) -> None:
    """The main job on the built-in zoo: build it (once), merge it with fixed recipes, score everything."""
    from evomerge.demo import run_demo

    scores, skills = run_demo(workdir, log=console.print)
    _print_accuracy(scores, skills, title=f"zoo skills, exact match on 200 held-out items ({workdir})")


@app.command("dashboard")
def dashboard(
    db: Annotated[str | None, typer.Option(help="archive URL (default sqlite:///./evomerge.db); opened read-only",
                                           envvar="EVOMERGE_DB")] = None,
    host: Annotated[str, typer.Option(help="address to listen on; anything but loopback needs --token")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8080,
    token: Annotated[str | None, typer.Option(help="required from every browser (given once as ?token=...)",
                                              envvar="EVOMERGE_DASHBOARD_TOKEN")] = None,
    allow_host: Annotated[list[str] | None, typer.Option(help="a Host name the pages may be reached by (a proxy's "
                                                                "or a DNS name); repeatable")] = None,
) -> None:
    """A read-only web dashboard over the archive: runs, live history, Pareto front, recipes, lineage, items."""
    try:
        from evomerge.dashboard.app import serve
    except ImportError as err:
        raise EvomergeError(f"the dashboard needs its extra ({err.name} is missing)",
                            hint="pip install 'evomerge[dashboard]'") from None
    from evomerge.store.schema import default_url

    serve(db or default_url(), host=host, port=port, token=token, allow_hosts=allow_host, log=console.print)


def main() -> None:
    """Run the command line. An EvomergeError (bad input, or an environment problem the code
    turned into one, e.g. an unusable archive) is printed as ``error:`` and ``fix:`` lines on
    stderr, exit status 2, no traceback. After a ``--json`` command, stdout is sealed: whatever runs
    at exit writes to stderr, so the JSON document stays the only thing on stdout."""
    as_json = "--json" in sys.argv[1:]
    try:
        rc = app(standalone_mode=False)  # a command's typer.Exit(N) comes back as N in this mode
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except EvomergeError as err:
        # soft_wrap: one line each, however narrow the terminal (scripts grep these)
        # escaped: a message holding "[...]" (a path, a list) is text, not rich markup
        err_console.print("[bold red]error:[/]", escape(err.message), highlight=False, soft_wrap=True)
        if err.hint:
            err_console.print("  [bold]fix:[/]", escape(err.hint), highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as e:  # usage errors of typer's (vendored) click
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            sys.exit(e.exit_code)
        raise
    finally:
        if as_json:
            seal_stdout()


if __name__ == "__main__":
    main()
