"""workflows: DAGs of tasks

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-05

* ``workflows``: the projection of the workflow topic (``coordinator/``), one row per
  workflow with its nodes as JSON, and its checkpoint in ``projector_offsets`` under the
  ``workflows`` name.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workflows",
        sa.Column("workflow_id", sa.Uuid(), primary_key=True),
        sa.Column("tenant", sa.Text(), nullable=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("on_failure", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("finished_round", sa.Integer(), nullable=True),
        sa.Column("digest", sa.Text(), nullable=True),
        sa.Column("spec", JSONB(), nullable=False),
        sa.Column("nodes", JSONB(), nullable=False),
        sa.Column("summary", JSONB(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("last_offset", sa.BigInteger(), nullable=False),
    )
    op.create_index("workflows_tenant_created", "workflows",
                    ["tenant", "created_at", "workflow_id"])


def downgrade() -> None:
    op.drop_index("workflows_tenant_created", table_name="workflows")
    op.drop_table("workflows")
