"""audit: the read model's retention rule and its checkpoint; task data keys

Revision ID: 0011
Revises: 0008
Create Date: 2026-12-05

* ``retention``  one row per projection: the cutoff the rule last applied (finished tasks
  that ended before it left ``tasks`` and ``task_events``), how many tasks it removed in
  all, and when. Written in the transaction that deletes; read by verify and rebuild.
* ``task_keys``  each task's data key, wrapped with the master key (events/crypto.py);
  deleting a row erases the task's sealed payload and result.
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE retention (
            projection text PRIMARY KEY,
            cutoff timestamptz NOT NULL,
            expired bigint NOT NULL DEFAULT 0,
            swept_at timestamptz NOT NULL DEFAULT now()
        )""")
    op.execute("""
        CREATE TABLE task_keys (
            task_id uuid PRIMARY KEY,
            tenant text,
            wrapped bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )""")
    op.execute("CREATE INDEX task_keys_tenant ON task_keys (tenant)")


def downgrade() -> None:
    op.execute("DROP TABLE task_keys")
    op.execute("DROP TABLE retention")
