"""tasks.created_by: who submitted each task

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06

* ``tasks.created_by``  the ``actor`` of the task's ``task.created``: the API key id that
  submitted it (``anonymous`` with auth off). Null for tasks the scheduler or the
  coordinator created, and for tasks created before events carried an actor; a
  ``projections rebuild`` fills it from the log for those that had one.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("created_by", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("tasks", "created_by")
