"""The first schema: runs (with the lease), candidates, objective values.

Revision ID: r0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("space_yaml", sa.Text, nullable=False),
        sa.Column("space_hash", sa.String(64), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("budget", sa.Integer, nullable=False),
        sa.Column("objectives", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("lease_owner", sa.String(200)),
        sa.Column("lease_epoch", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lease_expires_at", sa.Float),
    )
    op.create_table(
        "candidates",
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("recipe_json", sa.Text, nullable=False),
        sa.Column("recipe_id", sa.String(40), nullable=False),
        sa.Column("genome", sa.JSON, nullable=False),
        sa.Column("parents", sa.JSON, nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("worker", sa.String(200)),
        sa.Column("heartbeat_at", sa.Float),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("seconds", sa.Float),
        sa.Column("error", sa.Text),
        sa.Column("fitness", sa.Float),
        sa.Column("cached_from", sa.Integer),
    )
    op.create_index("ix_candidates_status", "candidates", ["run_id", "status"])
    op.create_index("ix_candidates_fitness", "candidates", ["run_id", "fitness"])
    op.create_table(
        "objectives",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
    )
    op.create_index("ix_objectives_name_value", "objectives", ["run_id", "name", "value"])


def downgrade() -> None:
    op.drop_table("objectives")
    op.drop_table("candidates")
    op.drop_table("runs")
