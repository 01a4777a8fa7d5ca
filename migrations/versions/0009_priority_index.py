"""priority index and concurrency leases

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05

* ``tasks_priority_created`` serves ``GET /tasks?sort=priority`` (keyset on priority,
  created_at, task_id) and the ``priority`` / ``min_priority`` filters.
* ``concurrency_leases``: the places taken under each ``concurrency_key`` (workers write
  it, see events/leases.py). Coordination, not a read model: rebuild leaves it alone.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("tasks_priority_created", "tasks", ["priority", "created_at", "task_id"])
    op.execute("""
        CREATE TABLE concurrency_leases (
            key text NOT NULL,
            task_id uuid NOT NULL,
            holder text NOT NULL,
            expires_at timestamptz NOT NULL,
            PRIMARY KEY (key, task_id)
        )""")
    op.execute("CREATE INDEX concurrency_leases_holder ON concurrency_leases (holder)")


def downgrade() -> None:
    op.execute("DROP TABLE concurrency_leases")
    op.drop_index("tasks_priority_created", table_name="tasks")
