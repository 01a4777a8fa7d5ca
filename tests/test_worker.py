"""Workers under real failures: kill -9, SIGTERM, rebalances, retries, timeouts, cancels.

Each test checks the log itself (read straight from Kafka): every task ends with exactly
one terminal event, and attempts are numbered as they ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from events.codec import encode
from events.log import (
    EventProducer,
    LogReader,
    TransactionalProducer,
    _send_batches,
    group_offsets,
    partition_for,
)
from events.models import CloudEvent, TaskCreated, TaskProgress, new_event
from tests.helpers import (
    ARTIFACTS,
    ROOT,
    Env,
    assert_read_model_is_fold_of_log,
    free_port,
    wait_until,
)

TERMINAL = {"task.done", "task.failed", "task.cancelled"}


async def submit(c: httpx.AsyncClient, body: dict[str, Any]) -> str:
    r = await c.post("/tasks", json=body)
    assert r.status_code == 202, r.text
    return str(r.json()["task_id"])


async def history(c: httpx.AsyncClient, tid: str) -> list[dict[str, Any]]:
    r = await c.get(f"/tasks/{tid}/events")
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def wait_status(c: httpx.AsyncClient, tid: str, statuses: set[str],
                      timeout: float = 60) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        r = await c.get(f"/tasks/{tid}")
        doc: dict[str, Any] = r.json()
        return doc if r.status_code == 200 and doc["status"] in statuses else None

    doc = await wait_until(check, timeout=timeout, what=f"{tid} in {statuses}")
    assert doc is not None
    return doc


async def by_task(env: Env) -> dict[str, list[CloudEvent]]:
    out: dict[str, list[CloudEvent]] = defaultdict(list)
    for _, ev in await env.log_events():
        out[str(ev.subject)].append(ev)
    return out


def terminals(evs: list[CloudEvent]) -> list[str]:
    return [e.type.value for e in evs if e.type.value in TERMINAL]


async def all_terminal_in_log(env: Env, tids: set[str]) -> bool:
    logged = await by_task(env)
    return all(terminals(logged.get(t, [])) for t in tids)


async def test_slow_task_does_not_block_100_fast_ones_in_its_partition(env: Env) -> None:
    env.proc("projector")
    env.proc("worker", TASKFLOW_WORKER_CONCURRENCY="16")
    await env.api()
    slow = uuid.uuid4()
    part = partition_for(slow, 6)
    fast: list[uuid.UUID] = []
    while len(fast) < 100:
        t = uuid.uuid4()
        if partition_for(t, 6) == part:
            fast.append(t)
    producer = EventProducer(bootstrap=env.bootstrap, topic=env.topic, timeout_s=10)
    await producer.start()
    try:
        await producer.append([new_event(
            TaskCreated(title="slow", type="sleep", payload={"seconds": 5}), task_id=slow,
            source="test")])
        await producer.append([new_event(
            TaskCreated(title=f"fast{i}", payload={"message": "m"}), task_id=t, source="test")
            for i, t in enumerate(fast)])
    finally:
        await producer.stop()
    await wait_until(lambda: all_terminal_in_log(env, {str(slow)} | {str(t) for t in fast}),
                     timeout=90, what="all terminal")
    logged = await by_task(env)
    slow_end = next(e.time for e in logged[str(slow)] if e.type.value == "task.done")
    fast_ends = [next(e.time for e in logged[str(t)] if e.type.value == "task.done")
                 for t in fast]
    assert all(r.partition == part for r, _ in await env.log_events()
               if _.subject in set(fast) | {slow})
    assert max(fast_ends) < slow_end  # every fast task finished while the slow one ran


def _bytes_read(pid: int) -> int:
    """What a process has read from files and sockets so far (``rchar``)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no rchar in /proc/{pid}/io")


async def test_a_backlogged_worker_reads_its_log_once(env: Env) -> None:
    """A worker with a full backlog holds back without fetching the log again.

    It used to pause its partitions, and aiokafka drops a paused partition's fetched
    records and fetches them again on resume: a worker catching up on a burst read its
    log about ten times over. The worker process's own bytes read are counted from
    /proc, from after its warm-up task until 6,000 tasks submitted at once are terminal.
    """
    w = env.proc("worker")
    producer = EventProducer(bootstrap=env.bootstrap, topic=env.topic, timeout_s=30)
    await producer.start()
    try:
        warm = uuid.uuid4()
        await producer.append([new_event(TaskCreated(title="warm", type="noop", payload={}),
                                         task_id=warm, source="test")])
        await wait_until(lambda: all_terminal_in_log(env, {str(warm)}), timeout=60,
                         what="the warm-up task terminal")
        before = _bytes_read(w.pid)
        tids = [uuid.uuid4() for _ in range(6000)]
        for i in range(0, len(tids), 1000):
            await producer.append([
                new_event(TaskCreated(title=f"b{i + j}", type="noop", payload={}),
                          task_id=t, source="test")
                for j, t in enumerate(tids[i:i + 1000])])
    finally:
        await producer.stop()
    await wait_until(lambda: all_terminal_in_log(env, {str(t) for t in tids}), timeout=120,
                     what="6,000 tasks terminal", interval=1)
    read = _bytes_read(w.pid) - before
    records = await env.read_log()
    logged = sum(len(r.value or b"") + len(r.key or b"")
                 + sum(len(k) + len(v) for k, v in r.headers) for r in records)
    assert len(records) == 3 * 6001, len(records)  # created, processing, done: no more
    # At least once (the worker runs on uvloop, whose socket reads rchar counts), and not
    # again.
    assert logged <= read < 2 * logged, f"the worker read {read:,} bytes of a {logged:,}-byte log"


async def test_two_workers_500_tasks_kill9_one_exactly_one_terminal_each(env: Env) -> None:
    env.proc("projector")
    w = env.proc("worker", TASKFLOW_WORKER_CONCURRENCY="32")
    env.proc("worker", TASKFLOW_WORKER_CONCURRENCY="32")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=60) as c:
        r = await c.post("/tasks:batch", json={"tasks": [
            {"title": f"s{i}", "type": "sleep", "payload": {"seconds": 0.5}}
            for i in range(500)]})
        assert r.status_code == 202, r.text
        tids = {t["task_id"] for t in r.json()["items"]}

        async def some_done() -> bool:
            logged = await by_task(env)
            return sum(bool(terminals(logged.get(t, []))) for t in tids) >= 100

        await wait_until(some_done, timeout=120, what="100 tasks done")
        w.kill9()
        await wait_until(lambda: all_terminal_in_log(env, tids), timeout=180,
                         what="every task terminal in the log")
    logged = await by_task(env)
    rerun = 0
    for t in tids:
        evs = logged[t]
        assert terminals(evs) == ["task.done"], (t, [e.type for e in evs])
        attempts = [e.attempt for e in evs if e.type.value == "task.processing"]
        assert attempts == list(range(1, len(attempts) + 1)), attempts
        assert max(attempts) == next(e.attempt for e in evs if e.type.value == "task.done")
        rerun += len(attempts) > 1
    assert rerun >= 1, "the kill interrupted no task; the test proved nothing"


async def _after_last_records(env: Env) -> dict[int, int]:
    """Per partition, the offset after its last record (markers may follow it)."""
    return {r.partition: r.offset + 1 for r, _ in await env.log_events()}


async def test_a_lagging_group_offset_costs_a_longer_read_not_a_second_run(env: Env) -> None:
    """Lanes commit their group offset at most every interval. A worker killed with its
    offsets far behind its work leaves a successor that folds the log from there and
    runs none of the finished tasks again."""
    group = f"{env.topic}.worker"
    env.proc("projector")
    w = env.proc("worker", TASKFLOW_WORKER_OFFSET_COMMIT_INTERVAL_MS="600000")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=60) as c:
        # A lane commits its offset on its first transaction and then not for the
        # interval, so every partition gets a task before the batch: a lane whose first
        # transaction came in the middle of the batch would commit an offset past some of
        # its records, and the successor would start less far back than this test means.
        first: set[str] = set()
        covered: set[int] = set()
        while len(covered) < 6 and len(first) < 200:  # the env's topic has 6 partitions
            r = await c.post("/tasks", json={"title": f"a{len(first)}",
                                             "payload": {"message": "m"}})
            assert r.status_code == 202, r.text
            first.add(str(r.json()["task_id"]))
            covered.add(int(r.json()["position"]["partition"]))
        await wait_until(lambda: all_terminal_in_log(env, first), timeout=60,
                         what="the first tasks terminal")

        async def every_lane_committed() -> bool:
            return len(await group_offsets(env.bootstrap, group, env.topic)) == 6

        await wait_until(every_lane_committed, timeout=30, what="an offset for every lane")
        r = await c.post("/tasks:batch", json={"tasks": [
            {"title": f"b{i}", "payload": {"message": "m"}} for i in range(60)]})
        assert r.status_code == 202, r.text
        second = {t["task_id"] for t in r.json()["items"]}
        await wait_until(lambda: all_terminal_in_log(env, second), timeout=60,
                         what="the second tasks terminal")
        ends = await _after_last_records(env)
        behind = await group_offsets(env.bootstrap, group, env.topic)
        assert sum(ends.values()) - sum(behind.values()) >= 60 * 3, (ends, behind)
        w.kill9()
        env.proc("worker")  # default interval: commits within a second
        later = {await submit(c, {"title": f"c{i}", "payload": {"message": "m"}})
                 for i in range(5)}
        await wait_until(lambda: all_terminal_in_log(env, later), timeout=90,
                         what="tasks after the restart terminal")

        async def caught_up() -> bool:
            # At or past each partition's last record: a position may sit on a marker.
            ends = await _after_last_records(env)
            now = await group_offsets(env.bootstrap, group, env.topic)
            return all(now.get(p, -1) >= end for p, end in ends.items())

        await wait_until(caught_up, timeout=30, what="the successor's offsets at the log end")
    logged = await by_task(env)
    for t in first | second | later:
        types = [e.type.value for e in logged[t]]
        assert types == ["task.created", "task.processing", "task.done"], (t, types)
    await assert_read_model_is_fold_of_log(env)


async def test_plugin_handler_module_and_cooperative_cancel_signal(env: Env) -> None:
    types = "echo,sleep,fail,flaky,compute,noop,spin"
    metrics_port = free_port()
    env.proc("projector")
    env.proc("worker", TASKFLOW_HANDLER_MODULES="tests.plugin_handlers",
             TASKFLOW_TASK_TYPES=types, TASKFLOW_WORKER_METRICS_PORT=str(metrics_port))
    await env.api(TASKFLOW_TASK_TYPES=types)
    marker = ARTIFACTS / env.name / "spin.marker"
    marker.parent.mkdir(parents=True, exist_ok=True)
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        tid = await submit(c, {"title": "spin", "type": "spin",
                               "payload": {"marker": str(marker)}})
        await wait_status(c, tid, {"PROCESSING"})
        metrics = (await c.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        assert "taskflow_worker_tasks_in_flight 1.0" in metrics
        assert (await c.post(f"/tasks/{tid}/cancel")).status_code == 202
        await wait_status(c, tid, {"CANCELLED"})
        await wait_until(_exists(marker), timeout=10, what="the handler to see the signal")
        echo = await submit(c, {"title": "e", "payload": {"message": "m"}})
        await wait_status(c, echo, {"DONE"})
        metrics = (await c.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
    assert marker.read_text() == f"{tid} saw the cancel"
    assert 'taskflow_tasks_finished_total{status="DONE",type="echo"} 1.0' in metrics
    assert 'taskflow_task_processing_seconds_count{type="spin"} 1.0' in metrics


async def test_a_result_the_read_model_cannot_hold_fails_the_task_not_the_worker(
        env: Env) -> None:
    """A handler returning a NUL (PostgreSQL refuses U+0000) or something that is not
    JSON fails its task once, with the reason; the worker and the projector go on."""
    types = "echo,bad_result"
    env.proc("projector")
    env.proc("worker", TASKFLOW_HANDLER_MODULES="tests.plugin_handlers",
             TASKFLOW_TASK_TYPES=types)
    await env.api(TASKFLOW_TASK_TYPES=types)
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        nul = await submit(c, {"title": "n", "type": "bad_result", "payload": {"kind": "nul"}})
        obj = await submit(c, {"title": "o", "type": "bad_result", "payload": {"kind": "obj"}})
        echo = await submit(c, {"title": "e", "payload": {"message": "after"}})
        failed_nul = await wait_status(c, nul, {"FAILED", "DONE"})
        failed_obj = await wait_status(c, obj, {"FAILED", "DONE"})
        assert (await wait_status(c, echo, {"DONE"}))["result"] == "after"
        progress = [e for e in await history(c, nul) if e["type"] == "task.progress"]
    assert failed_nul["status"] == "FAILED" and "NUL" in failed_nul["error"]
    assert failed_obj["status"] == "FAILED"
    assert "cannot be stored as JSON" in failed_obj["error"]
    assert progress and progress[0]["data"]["message"] == "half\ufffdway"
    logged = await by_task(env)
    for tid in (nul, obj):  # not retried: the same result would fail every attempt
        assert terminals(logged[tid]) == ["task.failed"]
        assert [e.attempt for e in logged[tid] if e.type.value == "task.processing"] == [1]
    await assert_read_model_is_fold_of_log(env)


def _exists(path: Path) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return path.exists()  # noqa: ASYNC240 - a stat of a local file

    return check


async def test_rebalance_between_workers_never_doubles_a_terminal(env: Env) -> None:
    env.proc("projector")
    w1 = env.proc("worker", TASKFLOW_WORKER_CONCURRENCY="4")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        tids = set()
        for i in range(60):
            tids.add(await submit(c, {"title": f"r{i}", "type": "sleep",
                                      "payload": {"seconds": 0.3}}))
            if i == 15:
                env.proc("worker", TASKFLOW_WORKER_CONCURRENCY="4")
            if i == 35:
                env.proc("worker", TASKFLOW_WORKER_CONCURRENCY="4")
            if i == 45:
                w1.kill9()
        await wait_until(lambda: all_terminal_in_log(env, tids), timeout=150,
                         what="every task terminal in the log")
    logged = await by_task(env)
    for t in tids:
        assert terminals(logged[t]) == ["task.done"], [e.type for e in logged[t]]


async def test_workers_joining_under_load_lose_no_task(env: Env) -> None:
    """Three workers join one by one while tasks pour in: each rebalance moves partitions
    to a consumer whose fetches start before its lanes are seeked. Every task must still
    run, and end exactly once."""
    env.proc("projector")
    env.proc("worker")
    await env.api()
    tids: set[str] = set()
    stop = asyncio.Event()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=60) as c:
        async def pour() -> None:
            i = 0
            while not stop.is_set():
                r = await c.post("/tasks:batch", json={"tasks": [
                    {"title": f"j{i}-{k}", "type": "noop", "payload": {}} for k in range(25)]})
                assert r.status_code == 202, r.text
                tids.update(t["task_id"] for t in r.json()["items"])
                i += 1
                await asyncio.sleep(0.01)

        pourer = asyncio.create_task(pour())
        for _ in range(3):
            await asyncio.sleep(2)
            env.proc("worker")
        await asyncio.sleep(4)
        stop.set()
        await pourer
        await wait_until(lambda: all_terminal_in_log(env, tids), timeout=120,
                         what="every task terminal in the log")
    logged = await by_task(env)
    assert len(tids) > 1000
    for t in tids:
        assert terminals(logged[t]) == ["task.done"], [e.type for e in logged[t]]


async def test_late_duplicate_created_never_runs_a_finished_task_again(env: Env) -> None:
    """An idempotent submit retried through another API process before the projector saw
    the first can append a second task.created for the same id, after the task ended."""
    env.proc("worker")
    tid = uuid.uuid4()
    marker = uuid.uuid4()
    while partition_for(marker, 6) != partition_for(tid, 6):
        marker = uuid.uuid4()
    created = TaskCreated(title="once", payload={"message": "m"})
    producer = EventProducer(bootstrap=env.bootstrap, topic=env.topic, timeout_s=10)
    await producer.start()
    try:
        await producer.append([new_event(created, task_id=tid, source="test")])
        await wait_until(lambda: all_terminal_in_log(env, {str(tid)}), timeout=60,
                         what="the task done")
        await producer.append([new_event(created, task_id=tid, source="test")])
        # The marker comes after the duplicate in the same partition: once it is done,
        # the worker has read past the duplicate.
        await producer.append([new_event(created, task_id=marker, source="test")])
    finally:
        await producer.stop()
    await wait_until(lambda: all_terminal_in_log(env, {str(marker)}), timeout=60,
                     what="the marker done")
    await asyncio.sleep(1)  # a wrongly restarted task would write within this time
    evs = (await by_task(env))[str(tid)]
    assert [e.type.value for e in evs] == ["task.created", "task.processing", "task.done",
                                           "task.created"]


async def test_retries_back_off_then_succeed_and_exhaustion_dead_letters(env: Env) -> None:
    env.proc("projector")
    env.proc("worker", TASKFLOW_RETRY_BASE_S="0.2", TASKFLOW_RETRY_CAP_S="1")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        flaky = await submit(c, {"title": "flaky", "type": "flaky",
                                 "payload": {"fail_times": 2}, "max_attempts": 5})
        doomed = await submit(c, {"title": "doomed", "type": "fail", "max_attempts": 2})
        await wait_status(c, flaky, {"DONE"})
        await wait_status(c, doomed, {"FAILED"})
        h = await history(c, flaky)
        assert [(e["type"], e["attempt"]) for e in h] == [
            ("task.created", 0), ("task.processing", 1), ("task.retry_scheduled", 1),
            ("task.processing", 2), ("task.retry_scheduled", 2), ("task.processing", 3),
            ("task.done", 3)]
        for sched, nxt in [(h[2], h[3]), (h[4], h[5])]:
            assert datetime.fromisoformat(nxt["time"]) >= datetime.fromisoformat(
                sched["data"]["not_before"])
        d = await history(c, doomed)
        assert [e["type"] for e in d] == [
            "task.created", "task.processing", "task.retry_scheduled", "task.processing",
            "task.failed", "task.dead_lettered"]
        task = (await c.get(f"/tasks/{doomed}")).json()
        assert task["dead_lettered"] is True and task["attempt"] == 2

        # Redrive through the API: it runs again (and fails again, twice more).
        r = await c.post(f"/tasks/{doomed}/retry")
        assert r.status_code == 202, r.text
        await wait_until(lambda: _count(c, doomed, "task.dead_lettered", 2), timeout=60,
                         what="second dead letter")
        types = [(e["type"], e["attempt"]) for e in await history(c, doomed)]
        assert types[6:] == [("task.redriven", 2), ("task.processing", 3),
                             ("task.retry_scheduled", 3), ("task.processing", 4),
                             ("task.failed", 4), ("task.dead_lettered", 4)]
        # Retrying a task that is not FAILED is a conflict.
        r = await c.post(f"/tasks/{flaky}/retry")
        assert r.status_code == 409 and r.headers["content-type"].startswith(
            "application/problem+json")


async def _count(c: httpx.AsyncClient, tid: str, etype: str, n: int) -> bool:
    return bool(sum(e["type"] == etype for e in await history(c, tid)) >= n)


async def test_scheduled_retry_survives_worker_death(env: Env) -> None:
    env.proc("projector")
    w = env.proc("worker", TASKFLOW_RETRY_BASE_S="3", TASKFLOW_RETRY_CAP_S="3")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        tid = await submit(c, {"title": "flaky", "type": "flaky", "payload": {"fail_times": 1}})
        await wait_until(lambda: _count(c, tid, "task.retry_scheduled", 1), timeout=30,
                         what="retry to be scheduled")
        w.kill9()  # dies while the retry waits for not_before
        env.proc("worker", TASKFLOW_RETRY_BASE_S="3", TASKFLOW_RETRY_CAP_S="3")
        await wait_status(c, tid, {"DONE"}, timeout=60)
        h = await history(c, tid)
    assert [e["type"] for e in h] == ["task.created", "task.processing",
                                      "task.retry_scheduled", "task.processing", "task.done"]
    assert datetime.fromisoformat(h[3]["time"]) >= datetime.fromisoformat(
        h[2]["data"]["not_before"])


async def test_timeout_fails_the_attempt_with_reason_timeout(env: Env) -> None:
    env.proc("projector")
    env.proc("worker")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        tid = await submit(c, {"title": "too slow", "type": "sleep", "payload": {"seconds": 30},
                               "timeout_s": 0.5, "max_attempts": 1})
        task = await wait_status(c, tid, {"FAILED"}, timeout=30)
        h = await history(c, tid)
    assert "timed out" in task["error"]
    failed = next(e for e in h if e["type"] == "task.failed")
    assert failed["data"]["reason"] == "timeout"


async def test_cancel_pending_running_and_finished(env: Env) -> None:
    env.proc("projector")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        # No worker yet: the task stays PENDING, is cancelled, and must never start.
        pending = await submit(c, {"title": "p", "payload": {"message": "never"}})
        await wait_status(c, pending, {"PENDING"})
        assert (await c.post(f"/tasks/{pending}/cancel")).status_code == 202
        await wait_until(lambda: _count(c, pending, "task.cancel_requested", 1), timeout=20,
                         what="cancel request projected")
        env.proc("worker")
        await wait_status(c, pending, {"CANCELLED"})
        running = await submit(c, {"title": "r", "type": "sleep", "payload": {"seconds": 30}})
        await wait_status(c, running, {"PROCESSING"})
        assert (await c.post(f"/tasks/{running}/cancel")).status_code == 202
        await wait_status(c, running, {"CANCELLED"}, timeout=20)
        r = await c.post(f"/tasks/{running}/cancel")
        assert r.status_code == 409, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        hp = [e["type"] for e in await history(c, pending)]
        hr = [e["type"] for e in await history(c, running)]
    assert "task.processing" not in hp and hp[-1] == "task.cancelled"
    assert hr[:2] == ["task.created", "task.processing"] and hr[-1] == "task.cancelled"


async def test_progress_is_reported_and_rate_limited(env: Env) -> None:
    env.proc("projector")
    env.proc("worker")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        tid = await submit(c, {"title": "p", "type": "sleep", "payload": {"seconds": 3}})

        async def progressing() -> dict[str, Any] | None:
            t = (await c.get(f"/tasks/{tid}")).json()
            return t if t["status"] == "PROCESSING" and 0 < t["progress"] < 100 else None

        mid = await wait_until(progressing, timeout=30, what="progress")
        assert mid is not None and mid["progress_message"]
        await wait_status(c, tid, {"DONE"})
        prog = [e for e in await history(c, tid) if e["type"] == "task.progress"]
    # sleep reports 10 times in 3 s; at most one event per 0.5 s gets through.
    assert 2 <= len(prog) <= 7, len(prog)
    pct = [e["data"]["percent"] for e in prog]
    assert pct == sorted(pct)


async def test_poison_record_goes_to_dead_letter_topic_and_partition_moves(env: Env) -> None:
    from events.log import ensure_topic

    dlt = env.topic + ".dlt"
    await ensure_topic(env.bootstrap, dlt, 1)
    env.proc("projector")
    env.proc("worker")
    await env.api()
    producer = EventProducer(bootstrap=env.bootstrap, topic=env.topic, timeout_s=10)
    await producer.start()
    try:
        key = str(uuid.uuid4()).encode()
        pos = await producer.append_raw(env.topic, key, b"\x00not json at all")
    finally:
        await producer.stop()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        after = [await submit(c, {"title": f"a{i}", "payload": {"message": "ok"}})
                 for i in range(12)]
        for t in after:
            await wait_status(c, t, {"DONE"})
    reader = LogReader(bootstrap=env.bootstrap, topic=dlt)
    await reader.start()
    try:
        reader.seek(0, 0)
        records = await wait_until(lambda: reader.poll(timeout_ms=500), timeout=30,
                                   what="dead-letter record")
    finally:
        await reader.stop()
    [rec] = records
    headers = dict(rec.headers)
    assert rec.value == b"\x00not json at all"
    assert headers["taskflow.dlt.topic"] == env.topic.encode()
    assert headers["taskflow.dlt.partition"] == str(pos.partition).encode()
    assert headers["taskflow.dlt.offset"] == str(pos.offset).encode()
    assert b"not JSON" in headers["taskflow.dlt.error"]


async def test_sigterm_drains_in_flight_and_exits_zero(env: Env) -> None:
    env.proc("projector")
    w = env.proc("worker", TASKFLOW_SHUTDOWN_GRACE_S="20")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        tids = [await submit(c, {"title": f"s{i}", "type": "sleep",
                                 "payload": {"seconds": 2}}) for i in range(4)]
        for t in tids:
            await wait_status(c, t, {"PROCESSING"})
        rc = await asyncio.to_thread(w.terminate, 60)
        assert rc == 0, w.output()[-2000:]
        for t in tids:  # finished by the stopping worker itself, no new worker needed
            await wait_status(c, t, {"DONE"}, timeout=10)
    logged = await by_task(env)
    for t in tids:
        assert [e.type.value for e in logged[t] if e.type.value != "task.progress"] == [
            "task.created", "task.processing", "task.done"]
    assert "shutdown Worker(" in w.output()


async def test_task_past_the_grace_period_is_rerun_by_another_worker(env: Env) -> None:
    env.proc("projector")
    w = env.proc("worker", TASKFLOW_SHUTDOWN_GRACE_S="0.5")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        tid = await submit(c, {"title": "long", "type": "sleep", "payload": {"seconds": 3}})
        await wait_status(c, tid, {"PROCESSING"})
        rc = await asyncio.to_thread(w.terminate, 60)
        assert rc == 0, w.output()[-2000:]
        env.proc("worker")
        await wait_status(c, tid, {"DONE"}, timeout=60)
        h = await history(c, tid)
    assert [(e["type"], e["attempt"]) for e in h if e["type"] != "task.progress"] == [
        ("task.created", 0), ("task.processing", 1), ("task.processing", 2), ("task.done", 2)]


def test_dlq_cli_lists_and_redrives(env: Env) -> None:
    asyncio.run(_dlq_cli(env))


async def _dlq_cli(env: Env) -> None:
    env.proc("projector")
    env.proc("worker")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        dead = [await submit(c, {"title": f"d{i}", "type": "fail", "max_attempts": 1})
                for i in range(3)]
        for t in dead:
            await wait_status(c, t, {"FAILED"})
        out = await asyncio.to_thread(_cli, env, "dlq", "list", "--type", "fail")
        listed = {orjson.loads(line)["task_id"] for line in out.splitlines()}
        assert listed == set(dead)
        await asyncio.to_thread(_cli, env, "dlq", "redrive", "--type", "fail")
        for t in dead:
            await wait_until(_counter(c, t, "task.dead_lettered", 2), timeout=60,
                             what="redriven task to fail again")
            assert "task.redriven" in [e["type"] for e in await history(c, t)]


def _counter(c: httpx.AsyncClient, tid: str, etype: str,
             n: int) -> Callable[[], Awaitable[bool]]:
    return lambda: _count(c, tid, etype, n)


def _cli(env: Env, *args: str) -> str:
    import os

    res = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT,
                         env={**os.environ, **env.vars}, capture_output=True, timeout=60,
                         check=False)
    assert res.returncode == 0, res.stderr.decode()
    return res.stdout.decode()


async def test_a_lane_transaction_larger_than_a_record_batch_lands_whole_or_not_at_all(
        env: Env) -> None:
    """A lane writes its transaction's events as whole record batches (256 KiB each). A
    transaction of several batches lands complete and in order in the lane's partition;
    one that is aborted leaves nothing a read_committed reader sees."""
    big = "x" * 2000  # ~2.3 KB events: 400 of them need four batches
    tid = uuid.uuid4()
    partition = partition_for(tid, 6)
    producer = TransactionalProducer(bootstrap=env.bootstrap,
                                     transactional_id=f"{env.topic}.big", timeout_s=30)
    await producer.start()
    try:
        wanted = [new_event(TaskProgress(percent=i % 101, message=big), task_id=tid,
                            source="taskflow/worker/test", attempt=1) for i in range(400)]
        await producer.commit(topic=env.topic, events=wanted, offsets={},
                              group_id=f"{env.topic}.g", partition=partition)

        class Boom(Exception):
            pass

        doomed = [new_event(TaskProgress(percent=1, message=big), task_id=tid,
                            source="taskflow/worker/doomed", attempt=1) for _ in range(300)]
        with contextlib.suppress(Boom):
            async with producer._producer.transaction():
                await _send_batches(producer._producer, env.topic, partition,
                                    [(str(ev.subject).encode(), encode(ev)) for ev in doomed])
                await asyncio.sleep(0.2)
                raise Boom()  # aborts the transaction
        await producer.commit(topic=env.topic, events=wanted[:1], offsets={},
                              group_id=f"{env.topic}.g", partition=partition)
    finally:
        await producer.stop()
    logged = await env.log_events()
    assert {r.partition for r, _ in logged} == {partition}
    assert [ev.id for _, ev in logged] == [ev.id for ev in wanted] + [wanted[0].id]
    assert not any(ev.source == "taskflow/worker/doomed" for _, ev in logged)
