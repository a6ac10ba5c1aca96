"""The dashboard at scale: API latency and a run page's first paint in Chromium, at 10^4 and 10^5
candidates, SQLite (and PostgreSQL with ``--backends sqlite,postgres``).

    python -m bench.dashboard_paint [--sizes 10000,100000] [--backends sqlite]

The archive is filled as ``bench.store_scale`` fills it (PENDING rows through the store, results
in bulk: fitness, 3 objectives, a 3-expert per-layer recipe, one parent each), plus finish
times, 200 per-item scores per task for the first 1000 candidates, and a space whose ``vary``
names weight and density. Then ``evomerge dashboard``'s app is served by uvicorn in this process
(a thread) and measured: each API route's median latency over 5 calls, and the run page's first
paint in headless Chromium (Debian's, through Playwright): navigation start to every plot and
the table drawn from a sample of the run (the page's own ``performance.now()``), and to every
finished candidate loaded in 20000-row chunks with the plots redrawn, median of 3 loads. First
paint: the run's stats and the candidate table on screen (plotly.js, 4.6 MB, loads beside them);
every plot: the plots drawn from the sample. Target: first paint under 1 s at 10^5 candidates.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

CHROMIUM = os.environ.get("EVOMERGE_CHROMIUM", "/usr/bin/chromium")
SPACE = {"kind": "ps", "vary": {"weight": {"low": 0, "high": 1}, "density": {"low": 0.1, "high": 1}},
         "strategy": {"name": "m2n2"}}


def fill(url: str, n: int) -> str:
    from sqlalchemy import insert, update

    from bench.store_scale import fill as fill_scale
    from evomerge.store import Store
    from evomerge.store.models import Candidate, ItemScores, Run
    from evomerge.store.records import pack_scores

    with Store.open(url) as store:
        run_id, _rate = fill_scale(store, n)
        rng = np.random.default_rng(1)
        with store.engine.begin() as conn:
            conn.execute(update(Run).where(Run.id == run_id).values(config={"space": SPACE, "engine": "hf"},
                                                                     status="finished"))
            t0 = time.time() - n * 0.5
            conn.execute(update(Candidate).where(Candidate.run_id == run_id).values(
                finished_at=t0 + Candidate.idx * 0.5, started_at=t0 + Candidate.idx * 0.5 - 0.4, seconds=0.4,
                items_scored=600, worker="bench:1"))
            conn.execute(insert(ItemScores), [{"run_id": run_id, "idx": i, "task": f"task{k}",
                                               "data": pack_scores((rng.random(200) < 0.5).astype(float))}
                                              for i in range(min(n, 1000)) for k in range(3)])
    return run_id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(url: str) -> tuple[str, object]:
    import uvicorn

    from evomerge.dashboard.app import create_app
    from evomerge.dashboard.archive import ReadOnlyArchive

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ReadOnlyArchive(url)), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(base + "/api/runs", timeout=5).read()
            return base, server
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the dashboard did not start")


def api_ms(base: str, path: str) -> float:
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        urllib.request.urlopen(base + path, timeout=60).read()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def paint_ms(base: str, run: str) -> tuple[float, float, float, int]:
    """(stats and table ms, every plot ms, every point loaded ms, points loaded): medians of 3
    fresh pages."""
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for _ in range(3):
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/runs/{run}")
            page.wait_for_selector("body[data-loaded='1']", timeout=300000)
            out.append((float(page.evaluate("document.body.dataset.paintMs")),
                        float(page.evaluate("document.body.dataset.readyMs")),
                        float(page.evaluate("document.body.dataset.loadedMs")),
                        int(page.evaluate("document.body.dataset.points"))))
            page.close()
        browser.close()
    return (statistics.median(v[0] for v in out), statistics.median(v[1] for v in out),
            statistics.median(v[2] for v in out), out[-1][3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--backends", default="sqlite")
    args = ap.parse_args()
    routes = {"runs": "/api/runs", "run": "/api/runs/{r}", "points (first chunk)": "/api/runs/{r}/points", "points (sample)": "/api/runs/{r}/points?sample=4000",
              "points (after the last)": "/api/runs/{r}/points?after={n}",
              "table page (by fitness)": "/api/runs/{r}/candidates?sort=fitness&desc=1&limit=50",
              "table page 1000 (by objective)": "/api/runs/{r}/candidates?sort=objective:task1&offset=50000&limit=50",
              "table (status filter)": "/api/runs/{r}/candidates?status=COMPLETE&offset=1000&limit=50",
              "recipe heatmap (top 10)": "/api/runs/{r}/picture?k=10", "lineage": "/api/runs/{r}/lineage",
              "items (2 candidates)": "/api/runs/{r}/items?a=1&b=2", "candidate": "/api/runs/{r}/candidates/17"}
    rows = []
    for backend in args.backends.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            with tempfile.TemporaryDirectory() as d:
                pg = None
                if backend == "sqlite":
                    url = f"sqlite:///{Path(d) / 'a.db'}"
                else:
                    from tests.pg import Cluster, new_database

                    pg = Cluster()
                    url = new_database(pg.url())
                t0 = time.perf_counter()
                run = fill(url, n)
                print(f"{backend} n={n}: filled in {time.perf_counter() - t0:.0f} s", flush=True)
                base, server = serve(url)
                lat = {name: api_ms(base, path.format(r=run, n=n - 1)) for name, path in routes.items()}
                paint, plots, loaded, points = paint_ms(base, run)
                rows.append((backend, n, lat, paint, plots, loaded, points))
                server.should_exit = True
                time.sleep(0.5)
                if pg is not None:
                    pg.stop()
    print("\n| backend | candidates | " + " | ".join(f"{k} ms" for k in routes) + " | first paint (stats, table) ms | every plot ms | all loaded ms |")
    print("|---|---:|" + "---:|" * (len(routes) + 3))
    for backend, n, lat, paint, plots, loaded, points in rows:
        assert points == n, (points, n)
        print(f"| {backend} | {n} | " + " | ".join(f"{lat[k]:.0f}" for k in routes)
              + f" | {paint:.0f} | {plots:.0f} | {loaded:.0f} |")


if __name__ == "__main__":
    main()
