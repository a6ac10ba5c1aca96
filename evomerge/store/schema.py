"""Opening an archive: URL checks, engine setup (SQLite WAL / PostgreSQL), schema version.

The schema version is the Alembic revision. An empty database is created at the newest
revision; a database at an older or unknown revision is refused until ``evomerge db upgrade``
(RELIABILITY.md promise 8).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from evomerge.errors import ConfigError, SchemaError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def default_url(workdir: Path | None = None) -> str:
    """``sqlite:///<workdir>/evomerge.db`` (workdir defaults to the current directory)."""
    return f"sqlite:///{(Path(workdir or Path.cwd()) / 'evomerge.db').resolve()}"


def make_engine(url: str) -> Engine:
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
        if path and path != ":memory:" and not Path(path).parent.exists():
            raise ConfigError(f"the directory of {path} does not exist", hint="create it or point --db elsewhere")
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            dbapi_conn.isolation_level = None  # SQLAlchemy's begin event below opens transactions
            cur = dbapi_conn.cursor()
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
    try:
        return create_engine(url, pool_pre_ping=True)
    except NoSuchModuleError as err:
        raise ConfigError(f"no driver for {url.split('://')[0]!r} ({err})",
                          hint="use postgresql+psycopg://... and pip install 'evomerge[postgres]'") from None


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


def check_schema(engine: Engine, url: str) -> None:
    """Create an empty database; refuse one at an older or unknown schema version."""
    tables = set(inspect(engine).get_table_names())
    if not tables - {"alembic_version"}:
        upgrade_engine(engine)
        return
    rev, head = current_revision(engine), head_revision()
    if rev == head:
        return
    shown = url if "@" not in url else url.split("://")[0] + "://...@" + url.split("@", 1)[1]
    if rev is None:
        raise SchemaError(f"{shown} has tables but no evomerge schema version (tables: {sorted(tables)[:6]})",
                          hint="point --db at an evomerge archive, or a new file/database")
    raise SchemaError(f"{shown} is at schema version {rev}; this evomerge needs {head}",
                      hint=f"back it up, then run `evomerge db upgrade --db {shown}`")
