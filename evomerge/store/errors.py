"""Database failures of the environment, as errors users can act on.

The rule: an error the database driver raises because of the environment (the server is
unreachable or slow to answer, the login is refused, the file is read-only, locked, corrupt or
not a database, the disk is full) leaves the store as an :class:`ArchiveError` naming the
archive, the problem and the fix, in one line. Its message never carries the SQL statement or
its parameters (which hold recipes and the search space's YAML). Errors that mean a bug
(integrity, programming errors) are not translated: they stay tracebacks.

The translation runs inside SQLAlchemy's ``handle_error`` hook of every engine the store makes
(:func:`evomerge.store.schema.make_engine`), so every statement and every connect is covered.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import URL

from evomerge.errors import EvomergeError

PG_HINT = "check the host and port in --db / EVOMERGE_DB, and that the PostgreSQL server is running and reachable"


class ArchiveError(EvomergeError):
    """The archive's database cannot be used: unreachable, read-only, locked, corrupt or full."""


def first_line(err: BaseException) -> str:
    """The first line of the driver's own message (no SQL, no parameters, no advice lines)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(err).__name__


def _is_environment_error(orig: BaseException, dbapi: Any) -> bool:
    """OperationalError (connections, locks, read-only files, disk), and a bare DatabaseError
    (SQLite: "file is not a database"); never IntegrityError/ProgrammingError (bugs)."""
    if dbapi is None:
        return False
    return isinstance(orig, dbapi.OperationalError) or type(orig) is dbapi.DatabaseError


def sqlite_error(path: str, orig: BaseException) -> ArchiveError:
    msg = first_line(orig)
    low = msg.lower()
    if "readonly" in low or "read-only" in low:
        return ArchiveError(f"the archive {path} is read-only for this user ({msg})",
                            hint="make the file and its directory writable (SQLite writes -wal/-shm files beside it), "
                                 "or copy the archive to a writable directory and point --db at the copy")
    if "unable to open" in low:
        return ArchiveError(f"cannot open or create the archive {path} ({msg})",
                            hint="check that its directory exists and is writable by this user, or point --db elsewhere")
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return ArchiveError(f"{path} is not an SQLite database, or is corrupt ({msg})",
                            hint="point --db at an evomerge archive (or a new file), or restore the archive from a backup")
    if "locked" in low or "busy" in low:
        return ArchiveError(f"the archive {path} is locked by another process ({msg})",
                            hint="wait for that process (a running search or resume) to finish, or stop it")
    if "full" in low:
        return ArchiveError(f"the disk holding {path} is full ({msg})", hint="free space there, then try again")
    return ArchiveError(f"SQLite cannot use the archive {path} ({msg})",
                        hint="check the file, its directory's permissions and the disk")


def postgres_error(where: str, url: URL, orig: BaseException) -> ArchiveError:
    msg = first_line(orig)
    low = msg.lower()
    state = getattr(orig, "sqlstate", None) or ""
    if not state and "fatal:" in low:  # refused while connecting: no SQLSTATE, the server's words only
        if "database" in low and "does not exist" in low:
            state = "3D000"
        elif "authentication failed" in low or "role" in low or "pg_hba.conf" in low:
            state = "28000"
    if state == "3D000":
        return ArchiveError(f"database {url.database!r} does not exist on {where} ({msg})",
                            hint=f"create it (createdb {url.database}) or fix the database name in --db / EVOMERGE_DB")
    if state.startswith("28"):
        return ArchiveError(f"PostgreSQL at {where} refused the login of user {url.username!r} ({msg})",
                            hint="check the user and password in --db / EVOMERGE_DB")
    if state == "53100":
        return ArchiveError(f"the PostgreSQL server at {where} is out of disk space ({msg})",
                            hint="free space on the database server, then try again")
    if "timeout" in low or "timed out" in low:
        return ArchiveError(f"no answer from PostgreSQL at {where} within the connect timeout ({msg})", hint=PG_HINT)
    if not state:  # no server answer at all: refused, unknown host, connection lost
        return ArchiveError(f"cannot reach PostgreSQL at {where} ({msg})", hint=PG_HINT)
    return ArchiveError(f"PostgreSQL at {where} failed ({msg})",
                        hint="check the database server (its log) and the URL in --db / EVOMERGE_DB")


def translate(url: URL, orig: BaseException, dbapi: Any) -> ArchiveError | None:
    """The :class:`ArchiveError` for a driver error caused by the environment, else None."""
    if not _is_environment_error(orig, dbapi):
        return None
    if url.get_backend_name() == "sqlite":
        return sqlite_error(url.database or ":memory:", orig)
    host = url.host or url.query.get("host") or "localhost"  # ?host=/socket/dir&port=N also names a server
    port = url.port or url.query.get("port") or 5432
    return postgres_error(f"{host}:{port}", url, orig)
