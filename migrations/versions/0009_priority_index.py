"""priority index: GET /tasks?sort=priority and ?priority= without a scan

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05

* ``tasks_priority_created`` serves ``GET /tasks?sort=priority`` (keyset on priority,
  created_at, task_id) and the ``priority`` / ``min_priority`` filters.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("tasks_priority_created", "tasks", ["priority", "created_at", "task_id"])


def downgrade() -> None:
    op.drop_index("tasks_priority_created", table_name="tasks")
