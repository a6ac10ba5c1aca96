"""Alembic migrations of the archive (run programmatically by :func:`evomerge.store.upgrade`)."""
