"""``projections verify`` and ``projections rebuild`` of the ``workflows`` projection.

The coordinator writes it (see ``coordinator/``); these fold the workflow topic with the
same ``events.workflows.apply_workflow`` and compare or replace.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, text

from events import workflow_db
from events.codec import decode
from events.errors import UndecodableEvent
from events.log import ensure_topic
from events.queries import short_engine
from events.settings import Settings
from events.tables import projector_offsets, workflows
from events.workflows import WORKFLOW_PROJECTION, WorkflowState, apply_workflow, workflow_topic
from projector.maintenance import Diff
from projector.replay import read_records

COMPARED = ("tenant", "name", "on_failure", "status", "round", "cancel_requested",
            "finished_round", "digest", "spec", "nodes", "summary", "created_at",
            "updated_at", "finished_at")


async def _fold(settings: Settings, upto: dict[int, int] | None
                ) -> tuple[dict[uuid.UUID, tuple[WorkflowState, int, int]], dict[int, int], int]:
    """Fold the workflow topic (to ``upto``, inclusive): states with their partition and
    last offset, the last offset read per partition, and the number of records."""
    states: dict[uuid.UUID, tuple[WorkflowState, int, int]] = {}
    last: dict[int, int] = {}
    n = 0
    async for r in read_records(bootstrap=settings.kafka_bootstrap,
                                topic=workflow_topic(settings.topic), upto=upto):
        n += 1
        last[r.partition] = r.offset
        try:
            ev = decode(r.value)
        except UndecodableEvent:
            continue  # the coordinator parks it; it changes no workflow
        old = states.get(ev.subject)
        new = apply_workflow(old[0] if old else None, ev)
        if new is not None:
            states[ev.subject] = (new, r.partition, r.offset)
    return states, last, n


async def verify(settings: Settings) -> tuple[list[Diff], int]:
    """Differences between the ``workflows`` table and a fold of the workflow topic up to
    the checkpoints read in the same snapshot as the rows."""
    topic = workflow_topic(settings.topic)
    async with short_engine(settings.database_url) as engine, engine.connect() as conn:
        await conn.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        cps = {r.partition: r.offset for r in await conn.execute(
            select(projector_offsets.c.partition, projector_offsets.c.offset).where(
                projector_offsets.c.projection == WORKFLOW_PROJECTION,
                projector_offsets.c.topic == topic))}
        rows = {r["workflow_id"]: dict(r)
                for r in (await conn.execute(select(workflows))).mappings()}
    if not cps and not rows:
        return [], 0
    states, _, n = await _fold(settings, cps)
    diffs: list[Diff] = []
    for sid in sorted(set(states) | set(rows), key=str):
        row, got = rows.get(sid), states.get(sid)
        if got is None:
            diffs.append(Diff(str(sid), "row", "present", "absent"))
            continue
        if row is None:
            diffs.append(Diff(str(sid), "row", "absent", "present"))
            continue
        want: dict[str, Any] = workflow_db.row(*got)
        for f in COMPARED:
            if row[f] != want[f]:
                diffs.append(Diff(str(sid), f, row[f], want[f]))
    return diffs, n


async def rebuild(settings: Settings) -> int:
    """Replace the ``workflows`` table with a fold of the whole workflow topic, in one
    transaction that holds the table locked, so the coordinator's writes wait for it."""
    topic = workflow_topic(settings.topic)
    await ensure_topic(settings.kafka_bootstrap, topic, settings.partitions)
    async with short_engine(settings.database_url) as engine, engine.begin() as conn:
        await conn.execute(text("LOCK TABLE workflows IN EXCLUSIVE MODE"))
        states, last, n = await _fold(settings, None)
        await workflow_db.replace_all(
            conn, topic=topic, rows=[workflow_db.row(*s) for s in states.values()],
            checkpoints=last)
    return n
