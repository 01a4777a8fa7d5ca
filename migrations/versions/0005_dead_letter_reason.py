"""dead_letters.reason: where a parked record was refused (decode, fold or write)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every record parked before this revision failed to decode: nothing else was parked.
    op.add_column("dead_letters", sa.Column("reason", sa.Text(), nullable=False,
                                            server_default="decode"))


def downgrade() -> None:
    op.drop_column("dead_letters", "reason")
