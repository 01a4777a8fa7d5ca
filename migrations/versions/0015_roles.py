"""roles of API keys

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06

* ``api_keys.role``  what a key may do in its tenant: ``admin``, ``submitter`` or
  ``reader`` (docs/security.md). Keys made before roles existed could do everything, so
  they become ``admin`` and keep working as they did; a key made from now on is a
  ``submitter`` unless it is told otherwise.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("role", sa.Text(), nullable=False,
                                        server_default="admin"))
    op.alter_column("api_keys", "role", server_default="submitter")
    op.create_check_constraint("api_keys_role", "api_keys",
                               "role IN ('admin', 'submitter', 'reader')")


def downgrade() -> None:
    op.drop_constraint("api_keys_role", "api_keys", type_="check")
    op.drop_column("api_keys", "role")
