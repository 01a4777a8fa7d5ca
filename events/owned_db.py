"""What the read models written by a partition owner (``events.partitioned``: the
scheduler's ``schedules``, the coordinator's ``workflows``) share: the upsert that never
moves a row back, the per-partition checkpoint, parked records, and the replacement of the
whole table by ``projections rebuild``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from events.tables import dead_letters, projector_offsets


def upsert(table: Table, key: str) -> Any:
    """Insert rows of ``table``, or update them unless the row's ``last_offset`` is newer
    (a second owner reading from the start writes the same rows again: they are a fold)."""
    stmt = insert(table)
    return stmt.on_conflict_do_update(
        index_elements=[table.c[key]],
        set_={c.name: stmt.excluded[c.name] for c in table.c if c.name != key},
        where=table.c.last_offset <= stmt.excluded.last_offset)


async def move_checkpoint(conn: AsyncConnection, *, projection: str, topic: str,
                          partition: int, offset: int) -> None:
    """Move the partition's checkpoint to ``offset``, in the caller's transaction. It
    never moves back."""
    cp = insert(projector_offsets).values(projection=projection, topic=topic,
                                             partition=partition, offset=offset)
    await conn.execute(cp.on_conflict_do_update(
        index_elements=[projector_offsets.c.projection, projector_offsets.c.topic,
                        projector_offsets.c.partition],
        set_={"offset": cp.excluded.offset, "updated_at": func.now()},
        where=projector_offsets.c.offset < cp.excluded.offset))


async def park(conn: AsyncConnection, *, projection: str, topic: str, partition: int,
               offset: int, key: bytes | None, raw: bytes | None, error: str) -> None:
    """Park an undecodable record of ``projection``'s topic (once)."""
    stmt = insert(dead_letters).values(projection=projection, topic=topic,
                                          partition=partition, offset=offset, key=key,
                                          raw=raw, error=error, reason="decode")
    await conn.execute(stmt.on_conflict_do_nothing())


async def replace_all(conn: AsyncConnection, *, table: Table, projection: str, topic: str,
                      rows: list[dict[str, Any]], checkpoints: dict[int, int],
                      chunk: int) -> None:
    """``projections rebuild``: the whole ``table`` and the projection's checkpoints, in
    the caller's transaction; rows go in ``chunk`` at a time."""
    await conn.execute(delete(table))
    await conn.execute(delete(projector_offsets).where(
        projector_offsets.c.projection == projection))
    for i in range(0, len(rows), chunk):
        await conn.execute(insert(table).values(rows[i:i + chunk]))
    if checkpoints:
        await conn.execute(insert(projector_offsets).values([
            {"projection": projection, "topic": topic, "partition": p, "offset": o}
            for p, o in checkpoints.items()]))


async def checkpoints(conn: AsyncConnection, *, projection: str,
                      topic: str) -> dict[int, int]:
    """The projection's checkpoint per partition."""
    q = select(projector_offsets.c.partition, projector_offsets.c.offset).where(
        projector_offsets.c.projection == projection, projector_offsets.c.topic == topic)
    return {r.partition: r.offset for r in await conn.execute(q)}

