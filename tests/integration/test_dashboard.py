"""`evomerge dashboard` (issue 18): the read-only API over archives real searches wrote, its
safety rules, and the pages in a real headless Chromium (Debian's, through Playwright) while a
real search writes the archive.

Screenshots: set ``EVOMERGE_SCREENSHOTS=DIR`` to keep the pages the browser tests render
(README's pictures are made so: ``EVOMERGE_SCREENSHOTS=docs/img pytest tests/integration/test_dashboard.py``).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli
from tests.service.helpers import write_space

CHROMIUM = os.environ.get("EVOMERGE_CHROMIUM", "/usr/bin/chromium")
XSS_NAME = '<img src=x onerror="window.__xss=1">'
XSS_ERROR = '<script>window.__xss=2</script><img src=x onerror="window.__xss=3">'


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The dashboard's app served by uvicorn in a thread of this process."""

    def __init__(self, db: str, **kw) -> None:
        import uvicorn

        from evomerge.dashboard.app import create_app
        from evomerge.dashboard.archive import ReadOnlyArchive

        self.archive = ReadOnlyArchive(db)
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.archive, **kw), host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline, "the dashboard did not start"
            time.sleep(0.05)

    def get(self, path: str, **headers: str) -> tuple[int, dict, bytes]:
        req = urllib.request.Request(self.base + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def json(self, path: str):
        status, _h, body = self.get(path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.archive.close()


@pytest.fixture(scope="module")
def archive_db(tmp_path_factory: pytest.TempPathFactory, tiny_sources: Path) -> str:
    """An archive with a CMA-ES run, an M2N2 run (parents), failures with markup in their error
    text and a run whose name is markup (written by SQL, as an older or foreign writer could)."""
    tmp = tmp_path_factory.mktemp("dash")
    db = f"sqlite:///{tmp / 'runs.db'}"
    for strategy, budget in (("cmaes", 24), ("m2n2", 24)):
        space = write_space(tmp, tiny_sources, strategy=strategy, budget=budget, name=f"d{strategy}")
        res = run_cli("search", "--space", str(space), "--db", db, "--engine", "synthetic", "--backend", "local",
                      "--name", strategy, cwd=tmp)
        assert res.returncode == 0, res.stderr
    with sqlite3.connect(tmp / "runs.db") as c:
        run_id = c.execute("SELECT id FROM runs WHERE name = 'cmaes'").fetchone()[0]
        c.execute("UPDATE candidates SET status = 'FAILED', fitness = NULL, error = ? WHERE run_id = ? AND idx IN (3, 4)",
                  (XSS_ERROR, run_id))
        c.execute("DELETE FROM objectives WHERE run_id = ? AND idx IN (3, 4)", (run_id,))
        for table, first in (("runs", "id"), ("candidates", "run_id"), ("objectives", "run_id")):
            cols = [r[1] for r in c.execute(f"PRAGMA table_info({table})")]
            picked = ["?" if col == first else ("?" if (table, col) == ("runs", "name") else col) for col in cols]
            params = ["run-xss"] + ([XSS_NAME] if table == "runs" else [])
            key = "id" if table == "runs" else "run_id"
            c.execute(f"INSERT INTO {table} ({', '.join(cols)}) SELECT {', '.join(picked)} FROM {table} "
                      f"WHERE {key} = ?", (*params, run_id))
    return db


@pytest.fixture(scope="module")
def server(archive_db: str):
    s = Server(archive_db)
    yield s
    s.stop()


# ---------------------------------------------------------------------------------------- the API
def test_api_agrees_with_the_store(server: Server, archive_db: str) -> None:
    from evomerge.pareto import pareto_front
    from evomerge.store import Store

    runs = {r["name"]: r for r in server.json("/api/runs")["runs"]}
    assert {"cmaes", "m2n2", XSS_NAME} <= set(runs)
    with Store.open(archive_db) as store:
        info = store.get_run("cmaes")
        rows = store.candidates(info.id, with_scores=True)
        best = store.best(info.id, k=10)
    r = runs["cmaes"]
    assert (r["done"], r["budget"], r["failed"], r["strategy"], r["engine"]) == (24, 24, 2, "cmaes", "synthetic")
    assert r["best"] == pytest.approx(best[0].fitness)
    assert isinstance(r["created_at"], float) and r["updated_at"] >= r["created_at"]
    one = server.json(f"/api/runs/{info.id}")
    assert one["counts"] == {"COMPLETE": 22, "FAILED": 2}
    assert one["errors"] == [{"status": "FAILED", "error": XSS_ERROR, "count": 2, "first": 3}]
    assert one["rate"] is not None and one["eta_s"] == 0.0
    # the sources as they are, scored once by the run (outside its budget)
    assert [(x["role"], Path(x["name"]).name, x["status"]) for x in one["sources"]] == [
        ("base", "base", "COMPLETE"), ("expert", "a", "COMPLETE"), ("expert", "b", "COMPLETE")]
    assert all(set(x["objectives"]) == {o["name"] for o in info.objectives} for x in one["sources"])

    # points: every finished candidate with its objectives, in chunks by cursor
    names = [o["name"] for o in info.objectives]
    first = server.json("/api/runs/cmaes/points?limit=10")
    assert first["index"] == list(range(10)) and first["next"] == 10
    rest = server.json(f"/api/runs/cmaes/points?after={first['next']}")
    assert rest["index"] == list(range(10, 24)) and rest["next"] == 24
    assert server.json("/api/runs/cmaes/points?after=24")["index"] == []
    by_idx = {r.index: r for r in rows}
    for part in (first, rest):
        for k, i in enumerate(part["index"]):
            assert part["status"][k] == by_idx[i].status
            for n in names:
                want = (by_idx[i].objectives or {}).get(n)
                assert part["objectives"][n][k] == (None if want is None else pytest.approx(want, abs=1e-6))
    sample = server.json("/api/runs/cmaes/points?sample=5")
    assert 1 <= len(sample["index"]) <= 5 and sample["next"] == 0

    # the table: sorted by fitness, filtered by status, by an objective's range, paginated
    page = server.json("/api/runs/cmaes/candidates?sort=fitness&desc=1&limit=5")
    assert page["total"] == 22 and [x["index"] for x in page["rows"]] == [b.index for b in best[:5]]
    failed = server.json("/api/runs/cmaes/candidates?status=FAILED")
    assert failed["total"] == 2 and [x["index"] for x in failed["rows"]] == [3, 4]
    n0 = names[0]
    cut = sorted(by_idx[i].objectives[n0] for i in by_idx if by_idx[i].objectives)[10]
    ranged = server.json(f"/api/runs/cmaes/candidates?objective={n0}&low={cut}&sort=objective:{n0}")
    assert ranged["total"] == sum(1 for x in rows if x.objectives and x.objectives[n0] >= cut)
    vals = [x["objectives"][n0] for x in ranged["rows"]]
    assert vals == sorted(vals) and min(vals) >= cut
    p2 = server.json("/api/runs/cmaes/candidates?offset=20&limit=10")
    assert [x["index"] for x in p2["rows"]] == [20, 21, 22, 23]

    # the recipe heatmap: the best candidate's per-layer weights, and the mean of the top k
    pic = server.json("/api/runs/cmaes/picture?k=3")
    assert [c["index"] for c in pic["candidates"]] == [b.index for b in best[:3]]
    recipe = json.loads(best[0].recipe_json)
    assert pic["best"][0] == recipe["models"][0]["parameters"]["weight"]
    tops = [json.loads(b.recipe_json)["models"][1]["parameters"]["weight"] for b in best[:3]]
    assert pic["mean"][1] == pytest.approx([sum(t[j] for t in tops) / 3 for j in range(len(tops[0]))])

    # lineage: M2N2's parents as edges; CMA-ES's generations as bands
    lin = server.json("/api/runs/m2n2/lineage?k=5")
    assert lin["kind"] == "graph"
    with Store.open(archive_db) as store:
        m2 = {r.index: r for r in store.candidates(store.get_run("m2n2").id)}
    assert lin["edges"] and all(p in m2[c].parents for p, c in lin["edges"])
    bands = server.json("/api/runs/cmaes/lineage")
    assert bands["kind"] == "generations" and sum(b["count"] for b in bands["bands"]) == 22

    # items: two candidates' per-item scores and what each got right
    a, b = best[0].index, best[-1].index
    items = server.json(f"/api/runs/cmaes/items?a={a}&b={b}")
    for t in items["tasks"]:
        sa, sb = by_idx[a].item_scores[t["task"]], by_idx[b].item_scores[t["task"]]
        assert t["a"] == pytest.approx(sa) and t["b"] == pytest.approx(sb)
        assert t["only_a"] == sum(x >= 0.5 > y for x, y in zip(sa, sb, strict=True))
        assert t["both"] + t["only_a"] + t["only_b"] + t["neither"] == len(sa)

    # one candidate: the recipe as mergekit YAML, the export command, children
    cand = server.json(f"/api/runs/m2n2/candidates/{lin['edges'][0][0]}")
    assert lin["edges"][0][1] in cand["children"]
    assert cand["mergekit_yaml"].startswith("merge_method:") and cand["export"].startswith("evomerge export m2n2:")
    assert server.get("/api/runs/nope")[0] == 404
    assert server.get("/api/runs/cmaes/candidates/999")[0] == 404
    assert server.get("/api/runs/cmaes/candidates?sort=bogus")[0] == 400
    assert server.get("/api/runs/cmaes/points?after=x")[0] == 400
    # the 2-D front the page draws is the archive's front over those two objectives
    vals2 = [(x.index, [x.objectives[n] for n in names[:2]]) for x in rows if x.objectives]
    front = sorted(vals2[i][0] for i in pareto_front([v for _, v in vals2], ["maximize", "maximize"]))
    assert front  # (the browser test compares the page's front with this computation)


def test_archive_is_opened_read_only(archive_db: str, tmp_path: Path) -> None:
    from sqlalchemy import text

    from evomerge.dashboard.archive import ReadOnlyArchive
    from evomerge.errors import ConfigError
    from evomerge.store.errors import ArchiveError

    a = ReadOnlyArchive(archive_db)
    try:
        with pytest.raises(ArchiveError), a.engine.begin() as conn:
            conn.execute(text("DELETE FROM candidates"))
    finally:
        a.close()
    missing = tmp_path / "none.db"
    with pytest.raises(ConfigError, match="no archive at"):
        ReadOnlyArchive(f"sqlite:///{missing}")
    assert not missing.exists()  # never created
    res = run_cli("dashboard", "--db", f"sqlite:///{missing}", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.startswith("error: no archive at") and "Traceback" not in res.stderr
    assert not missing.exists()


@pytest.mark.postgres
def test_postgres_archive_is_read_only(pg_url: str, tiny_sources: Path, tmp_path: Path) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    space = write_space(tmp_path, tiny_sources, strategy="random", budget=6, name="pgd")
    res = run_cli("search", "--space", str(space), "--db", pg_url, "--engine", "synthetic", "--backend", "local",
                  "--name", "pg", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    s = Server(pg_url)
    try:
        assert s.json("/api/runs/pg/points")["index"] == list(range(6))
        run = s.json("/api/runs/pg")
        assert run["done"] == 6 and len(run["sources"]) == 3 and run["fidelity"] == {"exact": 6}
        assert s.json("/api/runs/pg/candidates?sort=fitness&desc=1")["total"] == 6
        assert s.json("/api/runs/pg/candidates/0")["children"] == []  # random search: no parents
        assert s.json("/api/runs/pg/picture?k=3")["kind"] == "ps"
        with pytest.raises(DBAPIError, match="read-only transaction"), s.archive.engine.begin() as conn:
            conn.execute(text("DELETE FROM candidates"))
    finally:
        s.stop()


def test_safety_rules(server: Server, archive_db: str) -> None:
    from evomerge.dashboard.app import serve
    from evomerge.errors import ConfigError

    status, headers, _ = server.get("/runs/cmaes")
    csp = headers.get("content-security-policy", "")
    assert status == 200 and "script-src 'self'" in csp and "unsafe-eval" not in csp
    assert headers.get("x-content-type-options") == "nosniff" and "access-control-allow-origin" not in {
        k.lower() for k in headers}
    # a write request is refused before any route
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        req = urllib.request.Request(server.base + "/api/runs", method=method, data=b"{}")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert err.value.code == 405
    # DNS rebinding: a Host that is not this server
    assert server.get("/api/runs", Host="attacker.example:8080")[0] == 400
    assert server.get("/api/runs", Host=f"localhost:{server.port}")[0] == 200
    # beyond loopback only with a token; a taken port is an error with its fix
    with pytest.raises(ConfigError, match="without a token"):
        serve(archive_db, host="0.0.0.0", port=_free_port())
    with pytest.raises(ConfigError, match="cannot listen on 127.0.0.1") as taken:
        serve(archive_db, port=server.port)
    assert "another --port" in (taken.value.hint or "")
    # with a token: refused without it, given once in the URL it becomes a cookie
    s = Server(archive_db, token="s3cret")
    try:
        assert s.get("/api/runs")[0] == 401
        assert s.get("/api/runs", Authorization="Bearer s3cret")[0] == 200
        assert s.get("/api/runs", Authorization="Bearer wrong")[0] == 401
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(s.base + "/runs/cmaes?token=s3cret", timeout=30) as r:
            assert r.status == 200 and r.url.endswith("/runs/cmaes")  # redirected, token out of the URL
        with opener.open(s.base + "/api/runs", timeout=30) as r:
            assert r.status == 200
    finally:
        s.stop()


# ---------------------------------------------------------------------------------------- the browser
@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: run scripts/chromium.sh (apt-get install chromium)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def _shot(page, name: str) -> None:
    out = os.environ.get("EVOMERGE_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(out) / f"dashboard-{name}.png"), full_page=True)


def _wait(page, expr: str, timeout_s: float = 120) -> None:
    """Poll ``expr`` in the page until true (the page's CSP forbids eval, which Playwright's
    wait_for_function needs)."""
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expr):
        assert time.monotonic() < deadline, f"timed out waiting for {expr}"
        page.wait_for_timeout(200)


def _page(browser, errors: list[str]):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.set_default_timeout(120_000)
    return page


def test_pages_render_the_api_numbers_and_stored_markup_is_inert(server: Server, browser) -> None:
    errors: list[str] = []
    page = _page(browser, errors)
    page.goto(server.base + "/")
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("#runs tbody tr").count() == 3
    assert page.get_by_text(XSS_NAME, exact=True).count() == 1  # shown as text
    _shot(page, "runs")

    page.goto(server.base + "/runs/cmaes")
    page.wait_for_selector("body[data-loaded='1']")
    assert page.evaluate("document.body.dataset.points") == "24"
    # the heatmap draws the API's numbers
    pic = server.json("/api/runs/cmaes/picture?k=10")
    z = page.evaluate("document.getElementById('heatmap-best').data[0].z")
    assert z == pic["best"]
    zm = page.evaluate("document.getElementById('heatmap-mean').data[0].z")
    assert [v for row in zm for v in row] == pytest.approx([v for row in pic["mean"] for v in row])
    # the front the page draws (first two objectives) is the API points' non-dominated set
    pts = server.json("/api/runs/cmaes/points")
    from evomerge.pareto import pareto_front

    names = list(pts["objectives"])[:2]
    ok = [k for k, s in enumerate(pts["status"]) if s == "COMPLETE"]
    vals = [[pts["objectives"][n][k] for n in names] for k in ok]
    want = sorted(pts["index"][ok[i]] for i in pareto_front(vals, ["maximize", "maximize"]))
    assert json.loads(page.evaluate("document.getElementById('front').dataset.front")) == want
    # failures: the error text is shown as text
    assert XSS_ERROR in page.locator("#errors-table").inner_text()
    # the table pages and sorts through the API
    assert page.locator("#cand-table").get_attribute("data-total") == "24"
    page.select_option("#t-status", "FAILED")
    _wait(page, "document.getElementById('cand-table').dataset.total === '2'")
    _shot(page, "run")
    # a click on a front point opens its candidate
    page.select_option("#t-status", "")
    point = page.locator("#front .scatterlayer .trace").last.locator("path.point").first
    point.click(force=True)
    page.wait_for_url("**/candidates/*")
    clicked = int(page.url.rsplit("/", 1)[1])
    assert clicked in want
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("#recipe-yaml").inner_text().startswith("merge_method:")
    assert page.locator("#export-cmd").inner_text().startswith(f"evomerge export cmaes:{clicked} ")
    _shot(page, "candidate")

    # the run whose name is markup, and a failed candidate's page: nothing runs
    page.goto(server.base + "/runs/run-xss")
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("#run-name").inner_text() == XSS_NAME
    page.goto(server.base + "/runs/run-xss/candidates/3")
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("#c-error").inner_text() == XSS_ERROR
    assert page.evaluate("window.__xss") is None
    # a write from the page itself is refused
    assert page.evaluate("fetch('/api/runs', {method: 'POST'}).then(r => r.status)") == 405
    assert not [e for e in errors if "Content Security Policy" in e or "pageerror" in e], errors
    page.close()


def test_run_page_updates_while_a_real_search_runs(browser, zoo_dir: Path, tmp_path: Path) -> None:
    """A real search (transformers on the zoo, local backend) writes the archive while the page
    is open: the points count and the table grow without a reload."""
    db = f"sqlite:///{tmp_path / 'live.db'}"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), EVOMERGE_ZOO=str(zoo_dir))
    budget = 40
    log = (tmp_path / "search.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "evomerge.cli", "search", "--space",
                             str(REPO / "search_spaces" / "demo.yaml"), "--db", db, "--budget", str(budget),
                             "--backend", "local", "--name", "live"], cwd=tmp_path, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        # the run row exists once the search has created it (the zoo load comes first)
        deadline = time.monotonic() + 600
        while True:
            assert proc.poll() is None or (tmp_path / "live.db").exists(), (tmp_path / "search.log").read_text()
            if (tmp_path / "live.db").exists():
                con = sqlite3.connect(f"file:{tmp_path / 'live.db'}?mode=ro", uri=True)
                try:
                    if con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'runs'").fetchone()[0] and \
                            con.execute("SELECT count(*) FROM runs").fetchone()[0]:
                        break
                except sqlite3.OperationalError:
                    pass
                finally:
                    con.close()
            assert time.monotonic() < deadline, "the search did not start"
            time.sleep(0.5)
        server = Server(db)
        errors: list[str] = []
        page = _page(browser, errors)
        try:
            page.goto(server.base + "/runs/live")
            page.wait_for_selector("body[data-ready='1']")
            seen = [int(page.evaluate("document.body.dataset.points || '0'"))]
            # the count must move at least twice while the search is still running, without a reload
            while proc.poll() is None and len(set(seen)) < 3:
                page.wait_for_timeout(1000)
                seen.append(int(page.evaluate("document.body.dataset.points || '0'")))
            assert len(set(seen)) >= 3, f"the page did not follow the search: {seen}"
            assert proc.wait(timeout=900) == 0, (tmp_path / "search.log").read_text()
            _wait(page, f"document.body.dataset.points === '{budget}'", 60)
            _wait(page, f"document.getElementById('cand-table').dataset.total === '{budget}'", 60)
            assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # no reload
            # the per-skill view has the sources beside the merges; their scores are the models' own
            _wait(page, "document.getElementById('skills').dataset.sources === '4'", 30)
            from evomerge.evaluate.hf import HFEvaluator
            from evomerge.evaluate.tasks import load_task
            from evomerge.recipe import recipe_from_dict

            src = next(x for x in server.json("/api/runs/live")["sources"] if x["name"].endswith("expert_caesar"))
            tasks = [load_task(REPO / "fitness" / f"zoo_{t}.yaml") for t in ("add", "caesar", "length")]
            own = HFEvaluator().evaluate(recipe_from_dict({"merge_method": "linear", "models": [
                {"model": src["name"], "parameters": {"weight": 1.0}}]}), tasks).objectives
            assert src["objectives"] == pytest.approx(own)
            # three objectives: the front as a 3-D view (WebGL under the same strict CSP), the right set
            from evomerge.pareto import pareto_front

            pts = server.json("/api/runs/live/points")
            names = list(pts["objectives"])
            assert len(names) == 3
            page.select_option("#front-z", names[2])
            _wait(page, "document.getElementById('front').data[0].type === 'scatter3d'", 60)
            ok = [k for k, st in enumerate(pts["status"]) if st == "COMPLETE"]
            vals = [[pts["objectives"][n][k] for n in names] for k in ok]
            want = sorted(pts["index"][ok[i]] for i in pareto_front(vals, ["maximize"] * 3))
            assert json.loads(page.evaluate("document.getElementById('front').dataset.front")) == want
            assert not [e for e in errors if "pageerror" in e or "Content Security Policy" in e], errors
            _shot(page, "live")
        finally:
            page.close()
            server.stop()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
