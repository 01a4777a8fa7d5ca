"""retention: the read model's retention rule and its checkpoint

Revision ID: 0011
Revises: 0008
Create Date: 2026-12-05

* ``retention``  one row per projection: the cutoff the rule last applied (finished tasks
  that ended before it left ``tasks`` and ``task_events``), how many tasks it removed in
  all, and when. Written in the transaction that deletes; read by verify and rebuild.
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0008"
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


def downgrade() -> None:
    op.execute("DROP TABLE retention")
