"""Retention of the read model: finished tasks older than ``TASKFLOW_RETENTION_DAYS``
leave ``tasks`` and ``task_events``.

The rule: a task is kept unless it is finished (DONE, FAILED, CANCELLED) and finished
before the cutoff. The cutoff only moves forward, and it is the rule's checkpoint: the
sweep stores it in ``retention`` in the transaction that deletes, so a reader that sees
the rows gone also sees the cutoff that explains it. ``projections verify`` applies the
same rule with the stored cutoff to its fold of the log, and ``projections rebuild``
applies it to the shadow before the swap, so both agree with the live read model. The
log itself keeps everything (Kafka's own retention is a separate setting, see
docs/audit.md); ``taskflow replay`` still shows an expired task's events.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from events.fold import TaskState

_FINISHED = "('DONE', 'FAILED', 'CANCELLED')"


def expired(state: TaskState, cutoff: datetime | None) -> bool:
    """Whether the rule removes a task in this state."""
    return (cutoff is not None and state.terminal and state.finished_at is not None
            and state.finished_at < cutoff)


async def cutoff(conn: asyncpg.Connection, *, projection: str,
                 schema: str = "public") -> datetime | None:
    value = await conn.fetchval(
        f"SELECT cutoff FROM {schema}.retention WHERE projection = $1", projection)
    return value if isinstance(value, datetime) else None


async def expire(conn: asyncpg.Connection, *, schema: str, cutoff: datetime) -> int:
    """Delete the finished tasks that ended before ``cutoff``, and their journals."""
    await conn.execute(
        f"DELETE FROM {schema}.task_events e USING {schema}.tasks t "
        f"WHERE e.task_id = t.task_id AND t.status IN {_FINISHED} AND t.finished_at < $1",
        cutoff)
    res = await conn.execute(
        f"DELETE FROM {schema}.tasks WHERE status IN {_FINISHED} AND finished_at < $1", cutoff)
    return int(str(res).rsplit(" ", 1)[-1])


async def sweep(conn: asyncpg.Connection, *, schema: str, projection: str, days: float,
                now: datetime | None = None) -> int:
    """Apply the rule at ``now - days``; returns how many tasks left the read model."""
    new = (now or datetime.now(UTC)) - timedelta(days=days)
    async with conn.transaction():
        old = await conn.fetchval(
            f"SELECT cutoff FROM {schema}.retention WHERE projection = $1 FOR UPDATE",
            projection)
        if old is not None and old >= new:
            return 0
        n = await expire(conn, schema=schema, cutoff=new)
        await conn.execute(
            f"INSERT INTO {schema}.retention (projection, cutoff, expired) VALUES ($1, $2, $3) "
            "ON CONFLICT (projection) DO UPDATE SET cutoff = $2, "
            "expired = retention.expired + $3, swept_at = now()", projection, new, n)
    return n

