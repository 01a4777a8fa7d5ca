"""schedule_events: the journal of the schedule topic

Revision ID: 0012
Revises: 0008
Create Date: 2026-12-05

* ``schedule_events``: every record of ``<topic>.schedules`` the scheduler folded, with its
  position, written in the transaction that writes the ``schedules`` rows and checkpoint:
  what ``GET /schedules/{id}?as_of=`` folds.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedule_events",
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("schedule_id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", JSONB(), nullable=False),
        sa.PrimaryKeyConstraint("partition", "offset"),
    )
    op.create_index("schedule_events_schedule", "schedule_events",
                    ["schedule_id", "partition", "offset"])


def downgrade() -> None:
    op.drop_index("schedule_events_schedule", table_name="schedule_events")
    op.drop_table("schedule_events")
