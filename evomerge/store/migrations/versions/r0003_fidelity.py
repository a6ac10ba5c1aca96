"""Fidelity: how a candidate was scored (exact, or raced out with estimates), the items it was
scored on, why it stopped, the reference it raced against; an interval per objective.

Revision ID: r0003
Revises: r0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0003"
down_revision = "r0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("candidates") as batch:
        batch.add_column(sa.Column("fidelity", sa.String(8), nullable=False, server_default="exact"))
        batch.add_column(sa.Column("items_scored", sa.Integer, nullable=True))
        batch.add_column(sa.Column("stop_reason", sa.Text, nullable=True))
        batch.add_column(sa.Column("race_ref", sa.Integer, nullable=True))
    with op.batch_alter_table("objectives") as batch:
        batch.add_column(sa.Column("low", sa.Float, nullable=True))
        batch.add_column(sa.Column("high", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("objectives") as batch:
        batch.drop_column("high")
        batch.drop_column("low")
    with op.batch_alter_table("candidates") as batch:
        batch.drop_column("race_ref")
        batch.drop_column("stop_reason")
        batch.drop_column("items_scored")
        batch.drop_column("fidelity")
