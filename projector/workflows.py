"""``projections verify`` and ``projections rebuild`` of the ``workflows`` projection.

The coordinator writes it (see ``coordinator/``); these fold the workflow topic with the
same ``events.workflows.apply_workflow`` and compare or replace.
"""

from __future__ import annotations

from sqlalchemy import text

from events import workflow_db
from events.log import ensure_topic
from events.queries import short_engine
from events.settings import Settings
from events.tables import workflows
from events.workflows import WORKFLOW_PROJECTION, apply_workflow, workflow_topic
from projector import owned
from projector.maintenance import Diff

COMPARED = ("tenant", "name", "on_failure", "status", "round", "cancel_requested",
            "finished_round", "digest", "spec", "nodes", "summary", "created_at",
            "updated_at", "finished_at")


async def verify(settings: Settings) -> tuple[list[Diff], int]:
    """Differences between the ``workflows`` table and a fold of the workflow topic up to
    the checkpoints read in the same snapshot as the rows."""
    topic = workflow_topic(settings.topic)
    async with short_engine(settings.database_url) as engine, engine.connect() as conn:
        cps, rows = await owned.snapshot(conn, table=workflows, key="workflow_id",
                                         projection=WORKFLOW_PROJECTION, topic=topic)
    if not cps and not rows:
        return [], 0
    states, _, n = await owned.fold(settings, topic=topic, apply=apply_workflow, upto=cps)
    return owned.row_diffs(rows, states, workflow_db.row, COMPARED), n


async def rebuild(settings: Settings) -> int:
    """Replace the ``workflows`` table with a fold of the whole workflow topic, in one
    transaction that holds the table locked, so the coordinator's writes wait for it."""
    topic = workflow_topic(settings.topic)
    await ensure_topic(settings.kafka_bootstrap, topic, settings.partitions)
    async with short_engine(settings.database_url) as engine, engine.begin() as conn:
        await conn.execute(text("LOCK TABLE workflows IN EXCLUSIVE MODE"))
        states, last, n = await owned.fold(settings, topic=topic, apply=apply_workflow,
                                           upto=None)
        await workflow_db.replace_all(
            conn, topic=topic, rows=[workflow_db.row(*s) for s in states.values()],
            checkpoints=last)
    return n
