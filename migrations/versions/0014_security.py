"""limits shared by every API process: rate-limit buckets and idempotency claims

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05

* ``rate_buckets``      one token bucket per API key (``anonymous`` with auth off); every
  API process takes its tokens from here, so the limit holds across processes.
* ``idempotency_keys``  the body (a SHA-256 of its task spec) an ``Idempotency-Key`` was
  first used with, and where its ``task.created`` landed: the same key with another body
  is refused whichever API process receives it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_buckets",
        sa.Column("key", sa.Text(), primary_key=True),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("task_id", sa.Uuid(), primary_key=True),
        sa.Column("digest", sa.LargeBinary(), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=True),
        sa.Column("offset", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    op.drop_table("rate_buckets")
