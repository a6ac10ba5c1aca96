"""For the dashboard: a covering index of a run's candidates by status, fidelity and copy
source (its progress counts read the index, not the table), and the sources' own scores (each
source model of a run evaluated once on the run's objectives: the reference points beside the
merges).

Revision ID: r0004
Revises: r0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0004"
down_revision = "r0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_candidates_progress", "candidates", ["run_id", "status", "fidelity", "cached_from"])
    op.create_table(
        "source_scores",
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("name", sa.String(1024), primary_key=True),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("objectives", sa.JSON, nullable=True),
        sa.Column("fitness", sa.Float, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("seconds", sa.Float, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("source_scores")
    op.drop_index("ix_candidates_progress", table_name="candidates")
