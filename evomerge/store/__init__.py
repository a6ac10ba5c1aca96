"""The SQL archive of runs and candidates (SQLAlchemy 2; SQLite by default, PostgreSQL by URL).

See :mod:`evomerge.store.sql` for the promises it keeps and :mod:`evomerge.store.schema` for
schema versions (Alembic).
"""

from evomerge.store.errors import ArchiveError
from evomerge.store.schema import default_url
from evomerge.store.sql import CandidateRow, Lease, NewCandidate, RunInfo, Store


def upgrade(url: str) -> tuple[str | None, str]:
    """Migrate the archive at ``url`` to this version's schema (`evomerge db upgrade`); returns
    (the revision it was at, None for a new database; the revision it is at now). An archive no
    migration can bring forward (a revision this evomerge does not know, tables without an
    evomerge schema version) is refused with a SchemaError, untouched."""
    from evomerge.store.schema import make_engine, schema_state, upgrade_engine

    engine = make_engine(url)
    try:
        rev, head = schema_state(engine, url)
        if rev != head:
            upgrade_engine(engine)
        return rev, head
    finally:
        engine.dispose()


__all__ = ["ArchiveError", "CandidateRow", "Lease", "NewCandidate", "RunInfo", "Store", "default_url", "upgrade"]
