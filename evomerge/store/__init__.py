"""The SQL archive of runs and candidates (SQLAlchemy 2; SQLite by default, PostgreSQL by URL).

See :mod:`evomerge.store.sql` for the promises it keeps and :mod:`evomerge.store.schema` for
schema versions (Alembic).
"""

from evomerge.store.schema import default_url
from evomerge.store.sql import CandidateResult, CandidateRow, Lease, NewCandidate, RunInfo, Store


def upgrade(url: str) -> None:
    """Migrate the archive at ``url`` to this version's schema (`evomerge db upgrade`)."""
    from evomerge.store.schema import make_engine, upgrade_engine

    engine = make_engine(url)
    try:
        upgrade_engine(engine)
    finally:
        engine.dispose()


__all__ = ["CandidateResult", "CandidateRow", "Lease", "NewCandidate", "RunInfo", "Store", "default_url", "upgrade"]
