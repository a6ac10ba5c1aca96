"""Hardening (issue 19): errors, not tracebacks; output people script against.

1. An unusable archive (read-only file or directory, random bytes, unreachable or silent
   PostgreSQL, an unknown schema version), an index past the database integer, a pickled
   strategy snapshot: one ``error:`` line and one ``fix:`` line, exit status 2, no traceback,
   nothing lost (the archive untouched), never the space's YAML, never unpickled.
2. ``--json``: stdout is exactly one JSON document; whatever libraries write (to file descriptor
   1, through Python, from child processes, at exit) goes to stderr.
3. Times: ISO 8601 with offset in JSON, local time in tables; column names stay whole at 80
   columns.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from evomerge.errors import ConfigError, EvomergeError, SchemaError
from evomerge.result import EvalResult, Status
from evomerge.store import ArchiveError, NewCandidate, Store
from tests.conftest import REPO, run_cli, save_tiny
from tests.service.helpers import write_space

pytestmark = pytest.mark.faults

RECIPE = json.dumps({"merge_method": "linear", "models": [{"model": "/models/m"}]})
MARKER = "space-yaml-marker-5f2c"
DROP_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


def make_archive(db: str, *, name: str = "t", objectives: tuple[str, ...] = ("zoo_add", "zoo_caesar"),
                 n: int = 5) -> str:
    """An archive with one finished run of ``n`` COMPLETE candidates (written through the store)."""
    objs = [{"name": o, "direction": "maximize", "weight": 1.0} for o in objectives]
    with Store.open(db) as store:
        run = store.create_run(name=name, space_yaml="kind: ps\n", space_hash="h", seed=0, budget=n, objectives=objs,
                               config={"space": {"kind": "ps", "strategy": {"name": "random"}}, "engine": "synthetic"})
        lease = store.acquire_lease(run.id, "test", 60)
        store.add_candidates(lease, [NewCandidate(i, i // 2, RECIPE, f"r-{i:016x}", [float(i)], (i - 1,) if i else ())
                                     for i in range(n)])
        for i in range(n):
            attempt = store.claim(lease, i, "w")
            values = {o: ((i * (j + 3)) % n) / n for j, o in enumerate(objectives)}
            assert store.complete(lease, i, attempt, EvalResult(status=Status.COMPLETE, objectives=values, seconds=0.5),
                                  fitness=sum(values.values()))
        store.set_run_status(lease, "finished")
        store.release_lease(lease)
    return run.id


def dump(db_file: Path) -> list[str]:
    """The archive's whole content as SQL (WAL included), to compare before and after."""
    c = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
    try:
        return list(c.iterdump())
    finally:
        c.close()


def assert_one_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit status 2, an ``error:`` line and a ``fix:`` line on stderr, each containing no
    newline of its own; no traceback; every needle in the message."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    err = [ln for ln in lines if ln.startswith("error: ")]
    fix = [ln for ln in lines if ln.startswith("  fix: ")]
    assert len(err) == 1 and len(fix) == 1, proc.stderr
    for needle in needles:
        assert needle in err[0] + fix[0], (needle, proc.stderr)


# ---------------------------------------------------------------------- 1. errors, not tracebacks
def _unprivileged_prefix(tmp_path: Path) -> list[str]:
    """How to run a command for which file permissions apply (root bypasses them)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file permissions cannot be enforced")
    probe = tmp_path / "probe"
    probe.write_text("")
    probe.chmod(0o444)
    try:
        wrote = subprocess.run([*DROP_DAC, sys.executable, "-c", f"open({str(probe)!r}, 'a').write('x')"],
                               capture_output=True, timeout=60).returncode == 0
    finally:
        probe.unlink()
    if wrote:
        pytest.skip("dropping CAP_DAC_OVERRIDE did not make permissions apply here")
    return DROP_DAC


def test_read_only_archive_file_and_directory_one_line_never_the_space_yaml(tiny_sources: Path,
                                                                             tmp_path: Path) -> None:
    prefix = _unprivileged_prefix(tmp_path)
    home = tmp_path / "archive"
    home.mkdir()
    db_file = home / "a.db"
    db = f"sqlite:///{db_file}"
    make_archive(db, name="kept")
    space = write_space(tmp_path, tiny_sources, budget=4)
    space.write_text(f"# {MARKER}\n{space.read_text()}# {MARKER}\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, sys.executable, "-m", "evomerge.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)

    search = ["search", "--space", str(space), "--db", db, "--engine", "synthetic", "--backend", "local"]
    before = dump(db_file)
    db_file.chmod(0o444)  # the file read-only, its directory writable: reading works, writing is refused
    try:
        listed = cli("runs", "--db", db, "--json")
        assert listed.returncode == 0, listed.stderr
        assert [r["name"] for r in json.loads(listed.stdout)] == ["kept"]
        refused = cli(*search, "--name", "new")
        assert_one_error(refused, "read-only", str(db_file), "writable")
        assert MARKER not in refused.stdout + refused.stderr and "INSERT" not in refused.stderr
        db_file.chmod(0o644)
        Store.open(db).close()  # a clean close: no -wal/-shm files left beside the archive
        assert sorted(p.name for p in home.iterdir()) == ["a.db"]
        db_file.chmod(0o444)
        home.chmod(0o555)  # and now its directory too: SQLite cannot even open it
        for proc in (cli(*search, "--name", "new2"), cli("runs", "--db", db)):
            assert_one_error(proc, "read-only", str(db_file), "writable")
            assert MARKER not in proc.stdout + proc.stderr
    finally:
        home.chmod(0o755)
        db_file.chmod(0o644)
    assert dump(db_file) == before  # nothing lost, nothing half-written


def test_read_only_archive_in_process_error_carries_no_sql_and_no_yaml(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'a.db'}"
    make_archive(db)
    with Store.open(f"sqlite:///file:{tmp_path / 'a.db'}?mode=ro&uri=true") as store:  # read-only however privileged
        assert [r.name for r in store.list_runs()] == ["t"]  # reads work
        with pytest.raises(ArchiveError, match="read-only") as info:
            store.create_run(name="x", space_yaml=f"# {MARKER}\n", space_hash="h", config={}, seed=0, budget=1,
                             objectives=[])
    assert MARKER not in str(info.value) and "INSERT" not in str(info.value) and info.value.hint


def test_corrupt_sqlite_file_is_one_line_and_left_untouched(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(os.urandom(8192))
    before = junk.read_bytes()
    db = f"sqlite:///{junk}"
    with pytest.raises(ArchiveError, match="not an SQLite database, or is corrupt"):
        Store.open(db)
    for args in (["runs"], ["best", "x"], ["show", "x:1"], ["db", "upgrade"]):
        assert_one_error(run_cli(*args, "--db", db, cwd=tmp_path), "not an SQLite database", "restore")
    assert junk.read_bytes() == before


def test_unreachable_postgres_fails_fast_with_one_line(tmp_path: Path) -> None:
    t0 = time.monotonic()
    proc = run_cli("runs", "--db", "postgresql+psycopg://evomerge:secret@127.0.0.1:1/evomerge", cwd=tmp_path,
                   timeout=120)
    assert_one_error(proc, "cannot reach PostgreSQL at 127.0.0.1:1", "Connection refused", "--db")
    assert "secret" not in proc.stderr
    assert time.monotonic() - t0 < 60


def test_silent_postgres_times_out_instead_of_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    from evomerge.store import schema

    assert 0 < schema.CONNECT_TIMEOUT_S <= 30  # the default: a cluster's database may be slow, never forever
    monkeypatch.setattr(schema, "CONNECT_TIMEOUT_S", 2)
    with socket.socket() as server:  # accepts connections (the kernel's backlog) and never answers
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(ArchiveError, match=f"no answer from PostgreSQL at 127.0.0.1:{port}") as info:
            Store.open(f"postgresql+psycopg://u@127.0.0.1:{port}/db")
        assert time.monotonic() - t0 < 20
        assert "--db" in (info.value.hint or "")
        # a URL's own connect_timeout wins over the default
        t0 = time.monotonic()
        with pytest.raises(ArchiveError, match="no answer"):
            Store.open(f"postgresql+psycopg://u@127.0.0.1:{port}/db?connect_timeout=3")
        assert 2.5 < time.monotonic() - t0 < 20


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'a.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")


def test_candidate_index_past_the_database_integer_is_one_line(url: str, tmp_path: Path) -> None:
    run_id = make_archive(url)
    big = "1" * 23
    proc = run_cli("show", f"t:{big}", "--db", url, cwd=tmp_path)
    assert_one_error(proc, f"candidate index {big}", "out of range", "evomerge best")
    for ref in (f"t:{2**31}", "t:1²", "t:-1"):
        with pytest.raises(ConfigError):
            from evomerge import api

            api.show(ref, db=url)
    with Store.open(url) as store:
        with pytest.raises(ConfigError, match="has no candidate"):
            store.candidate(run_id, 10**22)
        assert store.candidate(run_id, 4).index == 4
    huge_k = run_cli("best", "t", "-k", big, "--db", url, cwd=tmp_path)
    assert_one_error(huge_k, "-k", "out of range")


def mkdir_pickle(path: Path) -> bytes:
    """A protocol-2 pickle that calls ``os.mkdir(path)`` when unpickled (written by hand: this
    code base never imports pickle)."""
    return b"\x80\x02cos\nmkdir\n(X" + len(str(path)).to_bytes(4, "little") + str(path).encode() + b"tR."


def _snapshot_blobs(db_file: Path) -> list[tuple[int, bytes]]:
    with sqlite3.connect(db_file) as c:
        return c.execute("SELECT seq, arrays FROM snapshots ORDER BY seq").fetchall()


def test_pickled_snapshot_is_never_unpickled_and_resume_goes_on(tiny_sources: Path, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    db_file = tmp_path / "a.db"
    db = f"sqlite:///{db_file}"
    space = write_space(tmp_path, tiny_sources, budget=12)
    crashed = run_cli("search", "--space", str(space), "--db", db, "--engine", "synthetic", "--backend", "local",
                      "--name", "snap", "--snapshot-every", "2", cwd=tmp_path, EVOMERGE_CRASH_AT="result:9")
    assert crashed.returncode != 0
    snaps = _snapshot_blobs(db_file)
    assert len(snaps) >= 2
    live = tmp_path / "live"  # the payload really acts when unpickled (checked in another interpreter)
    code = "import pickle, sys; pickle.loads(bytes.fromhex(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", code, mkdir_pickle(live).hex()], check=True, timeout=60)
    assert live.is_dir()
    marker = tmp_path / "unpickled"
    evil = mkdir_pickle(marker)
    newest, older = snaps[-1][0], snaps[-2][0]
    with sqlite3.connect(db_file) as c:
        c.execute("UPDATE snapshots SET arrays = ? WHERE seq = ?", (evil, newest))
    with Store.open(db) as store:
        run_id = store.get_run("snap").id
        with caplog.at_level("WARNING", logger="evomerge.store"):
            told, state, arrays = store.latest_snapshot(run_id)  # the default warning: a log record
        assert told == dict(_told(db_file))[older] and isinstance(state, dict)  # the next older one
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert f"snapshot {newest}" in caplog.records[0].getMessage() and "a pickle" in caplog.records[0].getMessage()
        with sqlite3.connect(db_file) as c:  # every snapshot damaged: none, and still nothing unpickled
            c.execute("UPDATE snapshots SET arrays = ?", (evil,))
            np_pickle = b"\x93NUMPY" + evil  # a bare .npy header in front is refused as well
            c.execute("UPDATE snapshots SET arrays = ? WHERE seq = ?", (np_pickle, older))
        warnings: list[str] = []
        assert store.latest_snapshot(run_id, warn=warnings.append) is None
        assert len(warnings) == len(snaps)
    assert not marker.exists()
    resumed = run_cli("resume", "snap", "--db", db, "--backend", "local", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    said = " ".join((resumed.stdout + resumed.stderr).split())  # the run's log wraps at 80 columns
    assert "Traceback" not in resumed.stderr and "skipped, never loaded" in said
    assert not marker.exists()
    with Store.open(db) as store:
        rows = store.candidates(store.get_run("snap").id)
    assert len(rows) == 12 and all(r.status == "COMPLETE" for r in rows)


def _told(db_file: Path) -> list[tuple[int, int]]:
    with sqlite3.connect(db_file) as c:
        return c.execute("SELECT seq, told FROM snapshots").fetchall()


def test_unknown_schema_version_is_refused_by_store_and_db_upgrade(tmp_path: Path) -> None:
    db_file = tmp_path / "future.db"
    db = f"sqlite:///{db_file}"
    make_archive(db)
    c = sqlite3.connect(db_file)
    with c:
        c.execute("UPDATE alembic_version SET version_num = 'r0099'")
    c.close()
    before = dump(db_file)
    with pytest.raises(SchemaError, match="'r0099', which this evomerge .* does not know") as info:
        Store.open(db)
    assert "pip install -U evomerge" in (info.value.hint or "")
    assert "run `evomerge db upgrade" not in (info.value.hint or "")  # the hint no longer sends users into a crash
    for args in (["runs"], ["db", "upgrade"]):
        assert_one_error(run_cli(*args, "--db", db, cwd=tmp_path), "r0099", "does not know", "pip install -U evomerge")
    assert dump(db_file) == before
    # tables without an evomerge schema version: db upgrade refuses them too (it used to crash creating tables)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE runs (id TEXT)")
    assert_one_error(run_cli("db", "upgrade", "--db", f"sqlite:///{other}", cwd=tmp_path), "no evomerge schema version")
    # and a current archive: nothing to do, said so
    ok = run_cli("db", "upgrade", "--db", f"sqlite:///{tmp_path / 'fresh.db'}", cwd=tmp_path)
    assert ok.returncode == 0 and "new archive created" in ok.stdout, ok.stderr
    again = run_cli("db", "upgrade", "--db", f"sqlite:///{tmp_path / 'fresh.db'}", cwd=tmp_path)
    assert again.returncode == 0 and "is current; nothing to do" in again.stdout, again.stderr


@pytest.mark.postgres
def test_schema_refusals_on_postgres_name_the_server_without_credentials(pg_url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    make_archive(pg_url)
    engine = create_engine(pg_url)
    user = make_url(pg_url).username
    try:
        for rev, needle in (("r0099", "does not know"), ("r0001", "schema version r0001; this evomerge needs")):
            with engine.begin() as conn:
                conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": rev})
            with pytest.raises(SchemaError, match=needle) as info:
                Store.open(pg_url)
            assert f"{user}@" not in str(info.value)
        assert "evomerge db upgrade --db URL" in (info.value.hint or "")  # runnable once the user's URL is in
        with pytest.raises(ArchiveError, match="database 'nope' does not exist on ") as missing:
            Store.open(pg_url.replace(make_url(pg_url).database, "nope", 1))
        assert "localhost:5432" not in missing.value.message  # the server of ?host=...&port=..., not a guess
    finally:
        engine.dispose()


def test_only_environment_errors_are_translated_bugs_stay_visible() -> None:
    from sqlalchemy.engine import make_url

    from evomerge.store.errors import translate

    url = make_url("sqlite:///x.db")
    assert translate(url, sqlite3.IntegrityError("UNIQUE constraint failed"), sqlite3) is None
    assert translate(url, sqlite3.ProgrammingError("bad parameter"), sqlite3) is None
    assert isinstance(translate(url, sqlite3.OperationalError("database is locked"), sqlite3), ArchiveError)
    assert isinstance(translate(url, sqlite3.DatabaseError("file is not a database"), sqlite3), ArchiveError)
    assert issubclass(ArchiveError, EvomergeError)


# ---------------------------------------------------------------------- 2. --json: one document on stdout
NOISY = r"""
import atexit, logging, os, subprocess, sys
from evomerge.evaluate import hf
chatty = logging.getLogger("chatty-library")
chatty.addHandler(logging.StreamHandler(sys.stdout))  # as vLLM's logging config does
chatty.setLevel(logging.INFO)
real = hf.HFEvaluator.evaluate
def noisy(self, *args, **kw):
    os.write(1, b"FD-LEVEL NOISE\n")
    print("PRINT NOISE", flush=True)
    chatty.info("LOGGING NOISE")
    subprocess.run([sys.executable, "-c", "print('CHILD NOISE')"], check=True)
    return real(self, *args, **kw)
hf.HFEvaluator.evaluate = noisy
atexit.register(lambda: os.write(1, b"AT-EXIT NOISE\n"))
from evomerge.cli import main
sys.argv = ["evomerge", *sys.argv[1:]]
main()
"""
NOISES = ("FD-LEVEL NOISE", "PRINT NOISE", "LOGGING NOISE", "CHILD NOISE", "AT-EXIT NOISE")


def write_task(tmp: Path) -> Path:
    """A small greedy-generation task on the zoo's vocabulary (search and held-out splits)."""
    items = [{"question": f"rot:{w}=", "answer": w} for w in ("abc", "hello", "zip")]
    for split in ("dev", "test"):
        (tmp / f"echo.{split}.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    spec = tmp / "echo.yaml"
    spec.write_text("name: echo\nkind: generate\ndata: echo.dev.jsonl\nheldout: echo.test.jsonl\n"
                    "prompt: \"{question}\"\ntarget: answer\nextract: strip\nmax_new_tokens: 4\n")
    return spec


def test_eval_json_is_the_only_thing_on_stdout(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    task = write_task(tmp_path)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", NOISY, "eval", str(tiny_models["base"]), "-t", str(task),
                           "--split", "both", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)  # the whole of stdout: one document
    assert doc["search"]["status"] == "COMPLETE" and len(doc["heldout"]["item_scores"]["echo"]) == 3
    assert proc.stdout.count("\n") == 1
    for noise in NOISES:
        assert noise in proc.stderr and noise not in proc.stdout, noise
    # the table keeps stdout for itself too: the engine's output goes to stderr
    table = subprocess.run([sys.executable, "-c", NOISY, "eval", str(tiny_models["base"]), "-t", str(task)],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert table.returncode == 0 and "echo" in table.stdout and "search: COMPLETE; 3 items" in table.stdout, table.stderr
    assert not any(noise in table.stdout for noise in NOISES[:4])


NOISY_STORE = r"""
import os, sys
from evomerge import api
real = api.open_store
def noisy(*args, **kw):  # a database driver or plugin that talks on stdout
    os.write(1, b"DRIVER NOISE\n")
    return real(*args, **kw)
api.open_store = noisy
from evomerge.cli import main
sys.argv = ["evomerge", *sys.argv[1:]]
main()
"""


def test_query_commands_print_exactly_one_json_document(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'a.db'}"
    make_archive(db)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for args in (["runs"], ["best", "t", "-k", "3"], ["pareto", "t"], ["show", "t:2"],
                 ["plot", "t", "--out", str(tmp_path / "p.png")]):
        proc = subprocess.run([sys.executable, "-c", NOISY_STORE, *args, "--db", db, "--json"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        json.loads(proc.stdout)
        assert "DRIVER NOISE" in proc.stderr and "DRIVER NOISE" not in proc.stdout, args
    failed = run_cli("show", "t:99", "--db", db, "--json", cwd=tmp_path)
    assert failed.returncode == 2 and failed.stdout == ""  # an error: nothing on stdout at all


def test_json_is_strict_non_finite_numbers_become_null(capsys: pytest.CaptureFixture[str]) -> None:
    from evomerge.cli_base import print_json

    print_json({"a": float("nan"), "b": [1.0, float("inf")], "c": (float("-inf"), "x")}, indent=None)
    assert json.loads(capsys.readouterr().out) == {"a": None, "b": [1.0, None], "c": [None, "x"]}


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_eval_json_keeps_vllm_logs_off_stdout(tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    model = save_tiny(tmp_path / "m", hidden_size=128, intermediate_size=384, num_attention_heads=4,
                      num_key_value_heads=4)
    task = write_task(tmp_path)
    proc = run_cli("eval", str(model), "-t", str(task), "--engine", "vllm", "--json", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["search"]["status"] == "COMPLETE", doc["search"]["error"]
    assert len(doc["search"]["item_scores"]["echo"]) == 3
    assert "INFO" in proc.stderr  # vLLM did log: to stderr


# ---------------------------------------------------------------------- 3. times and tables
TZ = "XYZ-5:30"  # POSIX: local time is UTC+05:30 (no tz database needed)


def test_times_are_iso_with_offset_in_json_and_local_in_tables(tmp_path: Path) -> None:
    db_file = tmp_path / "a.db"
    db = f"sqlite:///{db_file}"
    make_archive(db)
    with sqlite3.connect(db_file) as c:
        c.execute("UPDATE runs SET created_at = 1796423640.0")  # 2026-12-04 22:34 UTC
        c.execute("UPDATE candidates SET started_at = 1796423640.0, finished_at = 1796423700.0")
    runs = run_cli("runs", "--db", db, "--json", cwd=tmp_path, TZ=TZ)
    created = json.loads(runs.stdout)[0]["created_at"]
    assert created == "2026-12-05T04:04:00+05:30"
    assert datetime.fromisoformat(created).timestamp() == 1796423640.0
    shown = json.loads(run_cli("show", "t:1", "--db", db, "--json", cwd=tmp_path, TZ=TZ).stdout)
    assert shown["started_at"] == "2026-12-05T04:04:00+05:30" and shown["finished_at"] == "2026-12-05T04:05:00+05:30"
    table = run_cli("runs", "--db", db, cwd=tmp_path, TZ=TZ, COLUMNS="120")
    assert "2026-12-05 04:04" in table.stdout and "1796423640" not in table.stdout, table.stdout
    narrow = run_cli("runs", "--db", db, cwd=tmp_path, TZ=TZ, COLUMNS="80")  # the date over the time
    assert re.search(r"2026-12-05\s+04:04", narrow.stdout) and "1796423640" not in narrow.stdout, narrow.stdout
    text = run_cli("show", "t:1", "--db", db, cwd=tmp_path, TZ=TZ, COLUMNS="80")
    assert "started 2026-12-05 04:04, finished 2026-12-05 04:05" in text.stdout, text.stdout


def _header_and_body(out: str) -> str:
    return "\n".join(ln.rstrip() for ln in out.splitlines())


def test_tables_keep_column_names_whole_at_80_columns(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'a.db'}"
    make_archive(db, name="zoo-run-with-a-long-name", objectives=("zoo_add", "zoo_caesar", "zoo_length"))
    for args in (["best", "zoo-run-with-a-long-name", "-k", "5"], ["pareto", "zoo-run-with-a-long-name"]):
        out = run_cli(*args, "--db", db, cwd=tmp_path, COLUMNS="80")
        assert out.returncode == 0, out.stderr
        text = _header_and_body(out.stdout)
        assert "…" not in text and "..." not in text, text
        header = next(ln for ln in text.splitlines() if ln.startswith("index"))
        assert header.split() == ["index", "fitness", "zoo_add", "zoo_caesar", "zoo_length", "generation", "parents",
                                  "recipe_id"], text
        assert all(len(ln) <= 80 for ln in text.splitlines()), text
        ids = [r["recipe_id"] for r in json.loads(run_cli(*args, "--db", db, "--json", cwd=tmp_path).stdout)]
        assert ids and all(rid in "".join(text.split()) for rid in ids), text  # whole, if wrapped
    runs = _header_and_body(run_cli("runs", "--db", db, cwd=tmp_path, COLUMNS="80").stdout)
    assert "…" not in runs and all(len(ln) <= 80 for ln in runs.splitlines()), runs
    for name in ("name", "id", "status", "kind", "strategy", "engine", "created"):
        assert re.search(rf"(^|\s){name}(\s|$)", runs.splitlines()[0]), runs
    # more and longer objective names than 80 columns hold: short labels, the names in a legend
    db2 = f"sqlite:///{tmp_path / 'b.db'}"
    names = ("gsm8k_exact_match", "mgsm_ja_exact_match", "mmlu_choice_accuracy", "zoo_caesar_loglik")
    make_archive(db2, name="wide", objectives=names)
    wide = _header_and_body(run_cli("best", "wide", "-k", "3", "--db", db2, cwd=tmp_path, COLUMNS="80").stdout)
    assert "…" not in wide and all(len(ln) <= 80 for ln in wide.splitlines()), wide
    legend = " ".join(wide.split())
    for j, name in enumerate(names):
        assert f"o{j + 1} = {name}" in legend, wide
    # a wide terminal shows the names themselves
    roomy = run_cli("best", "wide", "-k", "3", "--db", db2, cwd=tmp_path, COLUMNS="200").stdout
    assert all(name in roomy for name in names) and "o1 =" not in roomy, roomy



def test_a_run_stored_with_format_1_recipes_is_refused_on_resume_in_one_line(tiny_sources: Path,
                                                                             tmp_path: Path) -> None:
    """A run begun before recipe formats holds format 1 recipes; this release decodes format 2
    ones, so the replay cannot match them: resume says so in one line; no candidate is added,
    dropped or rewritten (a candidate the crash left RUNNING is requeued, as every resume does)."""
    from evomerge.recipe import stored_recipe

    db_file = tmp_path / "a.db"
    db = f"sqlite:///{db_file}"
    space = write_space(tmp_path, tiny_sources, budget=12)
    crashed = run_cli("search", "--space", str(space), "--db", db, "--engine", "synthetic", "--backend", "local",
                      "--name", "old", cwd=tmp_path, EVOMERGE_CRASH_AT="result:5")
    assert crashed.returncode != 0
    with sqlite3.connect(db_file) as c:  # rewrite the archive as an older release stored it
        c.execute("DELETE FROM snapshots")
        for run_id, idx, text in c.execute("SELECT run_id, idx, recipe_json FROM candidates").fetchall():
            old = stored_recipe(json.loads(text)).model_copy(update={"recipe_format": 1})
            assert "recipe_format" not in old.canonical_json()
            c.execute("UPDATE candidates SET recipe_json = ?, recipe_id = ? WHERE run_id = ? AND idx = ?",
                      (old.canonical_json(), old.recipe_id, run_id, idx))
        before = c.execute("SELECT idx, recipe_id, recipe_json FROM candidates ORDER BY idx").fetchall()
    resumed = run_cli("resume", "old", "--db", db, "--backend", "local", cwd=tmp_path)
    said = " ".join((resumed.stdout + resumed.stderr).split())
    assert resumed.returncode != 0 and "Traceback" not in resumed.stderr
    assert "its recipes are recipe format 1" in said and "start a new run" in said
    with sqlite3.connect(db_file) as c:
        assert c.execute("SELECT idx, recipe_id, recipe_json FROM candidates ORDER BY idx").fetchall() == before
