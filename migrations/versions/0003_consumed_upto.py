"""projector_offsets.consumed_upto: where the projector's consumer stands, for lag only

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("projector_offsets", sa.Column("consumed_upto", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("projector_offsets", "consumed_upto")
