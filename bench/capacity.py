"""Scenario ``capacity``: the per-partition and per-event figures of the capacity model
(docs/scaling.md).

A projector folds the same number of complete no-op histories twice: from a topic of one
partition, and from a topic of ``PARTITIONS``. The first is what one partition carries
through one projector; the second what one projector carries from many. During each
fold it measures what every event costs Postgres (the database's growth, WAL bytes, the
postmaster's and its backends' CPU) and the projector (its CPU). Run it on an otherwise
idle machine: WAL and Postgres CPU are the server's, not the scenario's alone; the
database's growth is its own.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from bench.procs import BenchError, cpu_seconds, tree_cpu_seconds
from bench.world import PARTITIONS, World, fill_topic

if TYPE_CHECKING:
    from bench.run import Run


async def fold_cost(world: World, tasks: int, timeout_s: float = 900) -> dict[str, Any]:
    """Fill the world's topic with ``tasks`` histories, then time a fresh projector's fold
    and measure what it cost."""
    total = await fill_topic(world.bootstrap, world.topic, tasks, lambda _n: None)
    db = await world.connect()
    try:
        wal0 = int(await db.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"))
        size0 = int(await db.fetchval("SELECT pg_database_size(current_database())"))
        pg0 = tree_cpu_seconds(world.pg_pid) if world.pg_pid else 0.0
        t0 = time.perf_counter()
        proc = world.start("projector")
        deadline = time.monotonic() + timeout_s
        while (applied := await world.applied(db)) < total:
            if not proc.alive():
                raise BenchError(f"{proc.name} exited; see {proc.log_path}:\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"the projector applied {applied} of {total} events")
            await asyncio.sleep(0.05)
        seconds = time.perf_counter() - t0
        proj_cpu = cpu_seconds(proc.pid)
        pg_cpu = (tree_cpu_seconds(world.pg_pid) - pg0) if world.pg_pid else None
        wal = int(await db.fetchval(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")) - wal0
        size = int(await db.fetchval("SELECT pg_database_size(current_database())")) - size0
        rows = int(await db.fetchval(
            "SELECT (SELECT count(*) FROM task_events) + (SELECT count(*) FROM tasks) "
            "+ (SELECT count(*) FROM task_changes)"))
    finally:
        await db.close()
        world.stop()
    return {"events": total, "seconds": seconds, "events_per_s": total / seconds,
            "wal_bytes_per_event": wal / total, "rows_per_event": rows / total,
            "stored_bytes_per_event": size / total,
            "postgres_cpu_us_per_event": pg_cpu / total * 1e6 if pg_cpu is not None else None,
            "projector_cpu_us_per_event": proj_cpu / total * 1e6}


async def capacity(run: Run) -> None:
    tasks = run.sizes.capacity_tasks
    out: dict[str, Any] = {}
    for parts in (1, PARTITIONS):
        w = await run.lab.world(f"capacity_p{parts}", partitions=parts)
        try:
            out[f"{parts} partition(s)"] = await fold_cost(w, tasks)
        except Exception as exc:
            run.failed(f"capacity_p{parts}", "taskflow", exc)
    run.detail("capacity", "taskflow", out)
    for parts in (1, PARTITIONS):
        got = out.get(f"{parts} partition(s)")
        if got is None:
            continue
        label = f"one projector, {parts} partition(s)"
        run.figure("capacity", label, "events/s", "higher", comparable=False
                   ).values["taskflow"] = got["events_per_s"]
        for key, unit in (("stored_bytes_per_event", "database bytes/event"),
                          ("wal_bytes_per_event", "WAL bytes/event"),
                          ("postgres_cpu_us_per_event", "Postgres CPU µs/event"),
                          ("projector_cpu_us_per_event", "projector CPU µs/event")):
            if got[key] is not None:
                run.figure("capacity", label, unit, "lower", comparable=False
                           ).values["taskflow"] = got[key]
