"""``taskflow topics grow``: more partitions, and every task keeps the one it is on.

Tasks are running when the event topic grows from 6 to 12 partitions. Their later events
(a cancel from a fresh API, which hashes on 12, and the worker's ``task.cancelled``) must
land next to their ``task.created``, where about half of them would not hash any more.
Tasks submitted after the growth use the new partitions, and the consumers take them up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import defaultdict
from pathlib import Path

import httpx

from events.log import describe_partitions, partition_for
from events.models import EventType
from tests.helpers import ROOT, Env, wait_until

TASKFLOW = str(Path(sys.executable).parent / "taskflow")


def taskflow(env: Env, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TASKFLOW, *argv], env={**os.environ, **env.vars}, cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False,
                          stdin=subprocess.DEVNULL)


async def statuses(env: Env, ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[str, int]]:
    conn = await env.db()
    try:
        rows = await conn.fetch("SELECT task_id, status, partition FROM tasks "
                                "WHERE task_id = ANY($1::uuid[])", ids)
    finally:
        await conn.close()
    return {r["task_id"]: (r["status"], r["partition"]) for r in rows}


async def test_growing_keeps_each_task_on_its_partition(env: Env) -> None:
    api = await env.api()
    env.proc("worker", TASKFLOW_WORKER_CONCURRENCY="64")
    env.proc("projector")
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        old = []
        for i in range(24):
            r = await c.post("/tasks", json={"title": f"old{i}", "type": "sleep",
                                             "payload": {"seconds": 120}})
            assert r.status_code == 202
            old.append(uuid.UUID(r.json()["task_id"]))

        async def running() -> bool:
            st = await statuses(env, old)
            return len(st) == len(old) and all(s == "PROCESSING" for s, _ in st.values())

        await wait_until(running, timeout=60, what="the old tasks to run")
        recorded = {t: p for t, (_, p) in (await statuses(env, old)).items()}
        assert all(recorded[t] == partition_for(t, 6) for t in old)

        grown = taskflow(env, "topics", "grow", "--partitions", "12")
        assert grown.returncode == 0, grown.stderr
        assert "from 6 to 12" in grown.stderr
        assert len(await describe_partitions(env.bootstrap, env.topic)) == 12
        assert taskflow(env, "topics", "grow", "--partitions", "4").returncode != 0

        # A fresh API: its producer hashes keys on 12 partitions from the start.
        api.stop()
        await env.api()
        moved = [t for t in old if partition_for(t, 12) != recorded[t]]
        assert moved, "no task would hash elsewhere: the test would prove nothing"
        for t in old:
            assert (await c.post(f"/tasks/{t}/cancel")).status_code == 202
        new = []
        for i in range(48):
            r = await c.post("/tasks", json={"title": f"new{i}", "payload": {"message": "hi"}})
            assert r.status_code == 202
            new.append(uuid.UUID(r.json()["task_id"]))

        async def settled() -> bool:
            st = await statuses(env, old + new)
            return (len(st) == len(old) + len(new)
                    and all(st[t][0] == "CANCELLED" for t in old)
                    and all(st[t][0] == "DONE" for t in new))

        await wait_until(settled, timeout=120, interval=0.5,
                         what="old tasks cancelled and new ones done")

    where: dict[uuid.UUID, set[int]] = defaultdict(set)
    kinds: dict[uuid.UUID, list[str]] = defaultdict(list)
    for rec, ev in await env.log_events():
        tid = uuid.UUID(str(ev.subject))
        where[tid].add(rec.partition)
        kinds[tid].append(ev.type)
    for t in old:
        assert where[t] == {recorded[t]}, (t, where[t], recorded[t])
        assert EventType.CANCEL_REQUESTED in kinds[t] and EventType.CANCELLED in kinds[t]
    for t in new:
        assert where[t] == {partition_for(t, 12)}
    assert any(partition_for(t, 12) >= 6 for t in new)  # the new partitions did work

    verified = taskflow(env, "projections", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "0 difference(s)" in verified.stderr
