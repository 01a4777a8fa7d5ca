"""Concurrency keys: at most ``max_concurrency`` tasks of a key run at once, across three
workers, checked from the log: at every event, the tasks of each key between their
``task.processing`` and their end are counted."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import httpx

from tests.helpers import Env, wait_until
from tests.test_api import problem
from tests.test_priorities import _workers_settled
from tests.test_worker import all_terminal_in_log, by_task, submit

ENDS = {"task.done", "task.failed", "task.cancelled", "task.retry_scheduled"}


async def test_a_concurrency_key_is_never_exceeded_across_three_workers(env: Env) -> None:
    env.proc("projector")
    for _ in range(3):
        env.proc("worker", TASKFLOW_WORKER_CONCURRENCY="4")
    await env.api()
    await _workers_settled(env, 3)
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        r = await c.post("/tasks:batch", json={"tasks": [
            {"title": f"k{i}", "type": "sleep", "payload": {"seconds": 0.4},
             "concurrency_key": "k" if i % 3 else "solo",
             "max_concurrency": 2 if i % 3 else 1} for i in range(30)]})
        assert r.status_code == 202, r.text
        tids = {t["task_id"] for t in r.json()["items"]}
        free = {await submit(c, {"title": f"f{i}", "type": "sleep", "payload": {"seconds": 0.4}})
                for i in range(6)}
        for bad in ({"title": "x", "max_concurrency": 2},
                    {"title": "x", "concurrency_key": "k", "max_concurrency": 0},
                    {"title": "x", "concurrency_key": ""}):
            problem(await c.post("/tasks", json=bad), 422)
    await wait_until(lambda: all_terminal_in_log(env, tids | free), timeout=150,
                     what="every task terminal")
    logged = await by_task(env)
    key_of = {}
    for t in tids:
        created = next(e for e in logged[t] if e.type.value == "task.created")
        key_of[t] = created.data.concurrency_key  # type: ignore[attr-defined]
    marks: list[tuple[datetime, int, str]] = []  # (time, +1/-1, key); ends sort first
    for t in tids:
        for e in logged[t]:
            if e.type.value == "task.processing":
                marks.append((e.time, 1, key_of[t]))
            elif e.type.value in ENDS:
                marks.append((e.time, -1, key_of[t]))
    running: dict[str, int] = defaultdict(int)
    most: dict[str, int] = defaultdict(int)
    for _, step, key in sorted(marks):
        running[key] += step
        most[key] = max(most[key], running[key])
    assert most == {"k": 2, "solo": 1}, dict(most)
    # Tasks without a key were not held back by the keyed ones: all started early on.
    last_free_start = max(next(e.time for e in logged[t] if e.type.value == "task.processing")
                     for t in free)
    last_keyed = max(next(e.time for e in logged[t] if e.type.value == "task.processing")
                     for t in tids)
    assert last_free_start < last_keyed
