"""schedules: delayed and scheduled tasks

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

* ``tasks.schedule_id`` and ``tasks.due_at``: the schedule and due time a fire was for
  (``GET /schedules/{id}/runs``), with a partial index on the tasks that have one.
* ``schedules``: the projection of the schedule topic (``scheduler/``), one row per
  schedule, with its checkpoint in ``projector_offsets`` under the ``schedules`` name.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("schedule_id", sa.Uuid(), nullable=True))
    op.add_column("tasks", sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("tasks_schedule_due", "tasks", ["schedule_id", "due_at"],
                    postgresql_where=sa.text("schedule_id IS NOT NULL"))
    op.create_table(
        "schedules",
        sa.Column("schedule_id", sa.Uuid(), primary_key=True),
        sa.Column("tenant", sa.Text(), nullable=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("cron", sa.Text(), nullable=True),
        sa.Column("every_s", sa.Float(), nullable=True),
        sa.Column("timezone", sa.Text(), nullable=False),
        sa.Column("task", JSONB(), nullable=False),
        sa.Column("overlap", sa.Text(), nullable=False),
        sa.Column("catchup", sa.Text(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("anchor", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_task_id", sa.Uuid(), nullable=True),
        sa.Column("fires", sa.BigInteger(), nullable=False),
        sa.Column("skips", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("last_offset", sa.BigInteger(), nullable=False),
    )
    op.create_index("schedules_tenant_created", "schedules",
                    ["tenant", "created_at", "schedule_id"])


def downgrade() -> None:
    op.drop_index("schedules_tenant_created", table_name="schedules")
    op.drop_table("schedules")
    op.drop_index("tasks_schedule_due", table_name="tasks")
    op.drop_column("tasks", "due_at")
    op.drop_column("tasks", "schedule_id")
