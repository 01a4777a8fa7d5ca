"""dashboard logins: the cookie of POST /session, stored hashed

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06

* ``api_sessions``  one row per dashboard login: a SHA-256 of the cookie's token, the key
  it was made with and its tenant, and when it expires. Logging out deletes the row;
  revoking the key ends it too.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_sessions",
        sa.Column("token_hash", sa.Text(), primary_key=True),
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False,
                  server_default=sa.func.now()),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("api_sessions_key_id", "api_sessions", ["key_id"])
    op.create_index("api_sessions_expires_at", "api_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_table("api_sessions")
