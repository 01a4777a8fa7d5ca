"""worker_pools: the worker pools running now, and the types each serves

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05

* ``worker_pools``: one row per running worker (its pool, the types it serves, until when
  the row holds unless written again). Workers write it (events/pool_registry.py); the API
  reads it for ``/handlers`` and a PENDING task's ``waiting_reason``. Live state, not a
  projection of the log: ``projections rebuild`` and ``verify`` leave it alone.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_pools",
        sa.Column("worker_id", sa.Text(), primary_key=True),
        sa.Column("pool", sa.Text(), nullable=False),
        sa.Column("types", ARRAY(sa.Text()), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("worker_pools")
