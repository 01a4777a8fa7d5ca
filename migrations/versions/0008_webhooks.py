"""webhooks: subscriptions and deliveries, projected from the webhook topic

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05

* ``webhooks``            one row per subscription (the fold of its webhook.* events);
  ``secret`` is the signing secret, which the notifier needs in the clear to sign;
  ``task_id`` is set for a task's ``callback_url`` (that task's events only).
* ``webhook_deliveries``  one row per (webhook, task event): status, attempts, the last
  response code, and the CloudEvent body it sends (for redelivery).

* ``webhook_events``      the journal of subscription changes and attempts, in log order:
  what ``GET /webhooks/{id}?as_of=`` folds.

Their checkpoints are rows of ``projector_offsets`` (projection ``webhooks``).
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE webhooks (
            webhook_id uuid PRIMARY KEY,
            tenant text,
            url text NOT NULL,
            events text[] NOT NULL,
            description text,
            secret text NOT NULL,
            task_id uuid,
            deleted boolean NOT NULL DEFAULT false,
            created_at timestamptz,
            updated_at timestamptz
        )""")
    op.execute("CREATE INDEX webhooks_tenant ON webhooks (tenant, created_at) "
               "WHERE NOT deleted")
    op.execute("""
        CREATE TABLE webhook_deliveries (
            delivery_id uuid PRIMARY KEY,
            webhook_id uuid NOT NULL,
            tenant text,
            event_id uuid,
            event_type text,
            task_id uuid,
            status text NOT NULL,
            attempts integer NOT NULL,
            last_status_code integer,
            last_error text,
            body jsonb,
            created_at timestamptz,
            updated_at timestamptz
        )""")
    op.execute("CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries "
               "(webhook_id, created_at DESC)")
    op.execute("""
        CREATE TABLE webhook_events (
            partition integer NOT NULL,
            "offset" bigint NOT NULL,
            webhook_id uuid NOT NULL,
            type text NOT NULL,
            time timestamptz NOT NULL,
            event jsonb NOT NULL,
            PRIMARY KEY (partition, "offset")
        )""")
    op.execute("CREATE INDEX webhook_events_webhook ON webhook_events (webhook_id, time) "
               "WHERE type <> 'webhook.delivery_attempted'")


def downgrade() -> None:
    op.execute("DROP TABLE webhook_events")
    op.execute("DROP TABLE webhook_deliveries")
    op.execute("DROP TABLE webhooks")
