"""Opening an archive: URL checks, engine setup (SQLite WAL / PostgreSQL), schema version.

The schema version is the Alembic revision. An empty database is created at the newest
revision; a database at an older revision is refused until ``evomerge db upgrade``
(docs/reliability.md promise 8); one at a revision this evomerge does not know (a newer evomerge, or
another program) is refused, by the store and by ``evomerge db upgrade`` alike, since no
migration leads from it.

Every engine made here translates the database driver's environment errors (unreachable server,
read-only or corrupt file, ...) into :class:`~evomerge.store.errors.ArchiveError`, and a
PostgreSQL connect gives up after ``CONNECT_TIMEOUT_S`` seconds (a URL's own
``?connect_timeout=N`` wins) instead of hanging.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from evomerge.errors import ConfigError, SchemaError
from evomerge.store.errors import translate

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
CONNECT_TIMEOUT_S = 10


def default_url(workdir: Path | None = None) -> str:
    """``sqlite:///<workdir>/evomerge.db`` (workdir defaults to the current directory)."""
    return f"sqlite:///{(Path(workdir or Path.cwd()) / 'evomerge.db').resolve()}"


def make_engine(url: str, *, read_only: bool = False) -> Engine:
    """An engine for ``url``. ``read_only`` (the dashboard): SQLite opens the file with
    ``mode=ro`` (a missing file is an error, never created; the WAL mode is not set), PostgreSQL
    sessions start with ``default_transaction_read_only=on``, so no statement can write."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"{url!r} is not a database URL",
                          hint="use sqlite:///path/to/evomerge.db or postgresql+psycopg://user:pass@host/db") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"database {backend!r} is not supported", hint="use SQLite (default) or PostgreSQL")
    if backend == "sqlite":
        path = parsed.database
        if read_only and path and path != ":memory:" and not path.startswith("file:"):
            if not Path(path).is_file():
                raise ConfigError(f"no archive at {path}", hint="point --db at the archive a search writes "
                                  "(default sqlite:///./evomerge.db)")
            from urllib.parse import quote

            path = str(Path(path).resolve())
            url = f"sqlite:///file:{quote(path)}?mode=ro&uri=true"
        if path and parsed.query.get("uri") == "true" and path.startswith("file:"):
            path = path.removeprefix("file:")  # sqlite:///file:PATH?mode=ro&uri=true
        if path and path != ":memory:" and not Path(path).parent.exists():
            raise ConfigError(f"the directory of {path} does not exist", hint="create it or point --db elsewhere")
        engine = create_engine(url, connect_args={"timeout": 60})
        _translate_errors(engine)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None  # SQLAlchemy's begin event below opens transactions
            cur = dbapi_conn.cursor()
            if not read_only:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn) -> None:  # type: ignore[no-untyped-def]
            # writers take the lock up front (they queue instead of failing at commit); readers
            # stay deferred and, under WAL, never wait for a writer
            immediate = conn.get_execution_options().get("immediate")
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    connect_args: dict[str, Any] = {}
    if parsed.get_driver_name() in ("psycopg", "psycopg2") and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    if read_only:
        connect_args["options"] = "-c default_transaction_read_only=on"
    try:
        engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except NoSuchModuleError as err:
        raise ConfigError(f"no driver for {url.split('://')[0]!r} ({err})",
                          hint="use postgresql+psycopg://... and pip install 'evomerge[postgres]'") from None
    _translate_errors(engine)
    return engine


def _translate_errors(engine: Engine) -> None:
    """Environment errors of the driver leave every statement and connect as ArchiveError."""
    url, dbapi = engine.url, engine.dialect.loaded_dbapi

    @event.listens_for(engine, "handle_error")
    def _handle_error(ctx) -> BaseException | None:  # type: ignore[no-untyped-def]
        if ctx.is_pre_ping:  # the pool's liveness probe handles its own failures (it reconnects)
            return None
        return translate(url, ctx.original_exception, dbapi)


def _alembic_config(url: str):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade_engine(engine: Engine, revision: str = "head") -> None:
    from alembic import command

    cfg = _alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def known_revision(rev: str) -> bool:
    """Whether ``rev`` is exactly one of this evomerge's migrations (older or current)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config("sqlite://"))
    return rev in {s.revision for s in script.walk_revisions()}


def shown_url(url: str) -> str:
    """The URL without its credentials (user and password become ``...``)."""
    return url if "@" not in url else url.split("://")[0] + "://...@" + url.split("@", 1)[1]


def schema_state(engine: Engine, url: str) -> tuple[str | None, str]:
    """(current revision, head) of a database; None for an empty one. Refuses, with the
    reason and the fix, a database that no migration of this evomerge can bring to head: tables
    without an evomerge schema version, or a revision this evomerge does not know."""
    tables = set(inspect(engine).get_table_names())
    head, shown = head_revision(), shown_url(url)
    rev = current_revision(engine) if "alembic_version" in tables else None
    if rev is None and tables - {"alembic_version"}:
        raise SchemaError(f"{shown} has tables but no evomerge schema version (tables: {sorted(tables)[:6]})",
                          hint="point --db at an evomerge archive, or a new file/database")
    if rev is not None and not known_revision(rev):
        from evomerge import __version__

        raise SchemaError(f"{shown} is at schema version {rev!r}, which this evomerge ({__version__}, schema {head}) "
                          "does not know: a newer evomerge or another program wrote it",
                          hint="use the evomerge that wrote it (pip install -U evomerge), or point --db at another "
                               "archive; `evomerge db upgrade` cannot migrate it")
    return rev, head


def check_schema(engine: Engine, url: str) -> None:
    """Create an empty database; refuse one at an older or unknown schema version."""
    rev, head = schema_state(engine, url)
    if rev is None:
        upgrade_engine(engine)
        return
    if rev == head:
        return
    shown = shown_url(url)
    # the hint's command must run as written: with credentials hidden, the user's own URL stands in
    command = f"evomerge db upgrade --db {shown}" if shown == url else "evomerge db upgrade --db URL"
    raise SchemaError(f"{shown} is at schema version {rev}; this evomerge needs {head}",
                      hint=f"back it up, then run `{command}`" + ("" if shown == url else
                                                                 " with this URL, credentials included"))
