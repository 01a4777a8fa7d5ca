"""change feed retention watermark

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "change_retention",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("trimmed_upto", sa.BigInteger(), nullable=False),
        sa.Column("trimmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("id = 1", name="change_retention_single_row"),
    )
    op.execute("INSERT INTO change_retention (id, trimmed_upto) VALUES (1, 0)")
    op.create_index("task_changes_time", "task_changes", ["recorded_at"])


def downgrade() -> None:
    op.drop_index("task_changes_time", table_name="task_changes")
    op.drop_table("change_retention")
