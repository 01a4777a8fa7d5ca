"""Park, never stop: a record a consumer cannot handle is parked and the partition moves on.

The projector parks what it cannot decode, fold or write (found within its batch by
splitting it), the worker parks what it cannot decode in ``<topic>.dlt``, and that topic
exists wherever the event topic does.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import httpx
import orjson
import pytest

from events import constants, webhooks
from events.jsonsafe import jsonb_text, row_refusal
from events.log import EventProducer, LogReader, delete_topics, ensure_topic, partition_for
from events.models import (
    CloudEvent,
    EventType,
    Position,
    TaskCreated,
    TaskProcessing,
    new_event,
)
from events.schedules import schedule_topic
from events.workflows import workflow_topic
from tests.helpers import (
    ROOT,
    Env,
    assert_read_model_is_fold_of_log,
    wait_until,
)

WIDE = 2**70  # wider than 64 bits: Postgres (through asyncpg) and orjson refuse it


def python(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, **env.vars},
                          capture_output=True, text=True, timeout=300, check=False)


def cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return python(env, "-m", "cli.main", *args)


def created(tid: uuid.UUID, title: str = "t") -> CloudEvent:
    return new_event(TaskCreated(title=title, payload={"message": title}), task_id=tid,
                     source=constants.API_SOURCE)


def raw_event(etype: str, tid: uuid.UUID, data: dict[str, Any], attempt: int = 0,
              version: int = 1) -> bytes:
    """A CloudEvent as another producer may write it. The stdlib encoder writes integers
    of any width, which pydantic's and orjson's will not."""
    return json.dumps({
        "specversion": "1.0", "id": str(uuid.uuid4()), "source": "elsewhere", "type": etype,
        "subject": str(tid), "time": "2026-12-01T00:00:00Z",
        "datacontenttype": "application/json", "data": data, "schemaversion": version,
        "attempt": attempt,
    }).encode()


async def checkpoints(env: Env) -> dict[int, int]:
    conn = await env.db()
    try:
        return {r["partition"]: r["offset"] for r in await conn.fetch(
            'SELECT partition, "offset" FROM projector_offsets')}
    finally:
        await conn.close()


async def journal(env: Env) -> list[tuple[int, int]]:
    conn = await env.db()
    try:
        return [(r["partition"], r["offset"]) for r in await conn.fetch(
            'SELECT partition, "offset" FROM task_events ORDER BY partition, "offset"')]
    finally:
        await conn.close()


async def tasks(env: Env) -> dict[uuid.UUID, dict[str, Any]]:
    conn = await env.db()
    try:
        return {r["task_id"]: dict(r) for r in await conn.fetch("SELECT * FROM tasks")}
    finally:
        await conn.close()


# Each poison record sits in the middle of its task's events and of a batch of good ones.
#   undecodable  bytes that are no event at all (refused when decoded)
#   wide_payload a task.created whose payload holds a 70-bit integer (refused by Postgres
#                when its row is written)
#   wide_result  a task.done whose result is one (the fold's summary cannot encode it)
POISONS = {"undecodable": "decode", "wide_payload": "write", "wide_result": "fold"}


@pytest.mark.parametrize("kind", list(POISONS))
async def test_a_poison_record_in_a_batch_is_parked_and_the_rest_lands_once(
        env: Env, kind: str) -> None:
    victim = uuid.uuid4()
    others = [uuid.uuid4() for _ in range(40)]
    producer = EventProducer(bootstrap=env.bootstrap, topic=env.topic, timeout_s=10)
    await producer.start()
    try:
        await producer.append([created(t, f"before{i}") for i, t in enumerate(others[:20])])
        key = str(victim).encode()
        processing = new_event(TaskProcessing(worker_id="w"), task_id=victim,
                               source="taskflow/worker/w", attempt=1)
        if kind == "undecodable":
            await producer.append([created(victim)])
            poison = await producer.append_raw(env.topic, key, b"\x00 not an event")
            await producer.append([processing])
        elif kind == "wide_payload":
            poison = await producer.append_raw(env.topic, key, raw_event(
                "task.created", victim, {"title": "wide", "payload": {"n": WIDE}}, version=2))
            await producer.append([processing])
        else:
            await producer.append([created(victim), processing])
            poison = await producer.append_raw(env.topic, key, raw_event(
                "task.done", victim, {"result": {"n": WIDE}}, attempt=1))
        await producer.append([created(t, f"after{i}") for i, t in enumerate(others[20:])])
    finally:
        await producer.stop()
    records = await env.read_log()
    ends = {}
    for r in records:
        ends[r.partition] = r.offset

    # Started after everything is in the log, so the poison arrives inside a batch.
    proj = env.proc("projector")

    async def caught_up() -> bool:
        if not proj.alive():
            raise AssertionError(f"the projector exited:\n{proj.output()[-3000:]}")
        return await checkpoints(env) == ends

    await wait_until(caught_up, timeout=60, what="the projector to pass the poison record")
    assert proj.alive()

    parked = orjson.loads(cli(env, "projections", "dead-letters").stdout.splitlines()[0])
    assert (parked["projection"], parked["topic"]) == (constants.PROJECTION, env.topic)
    assert (parked["partition"], parked["offset"]) == (poison.partition, poison.offset)
    assert parked["key"] == str(victim) and parked["reason"] == POISONS[kind]
    assert parked["error"] and parked["parked_at"]
    listed = cli(env, "projections", "dead-letters")
    assert len(listed.stdout.splitlines()) == 1 and "1 parked record" in listed.stderr

    # Every other record is in the journal exactly once, in order; the poison is not.
    assert await journal(env) == [(r.partition, r.offset) for r in records
                                  if (r.partition, r.offset) != (poison.partition,
                                                                 poison.offset)]
    rows = await tasks(env)
    assert set(others) <= set(rows)
    if kind == "wide_payload":  # its events after the parked task.created still count
        assert (rows[victim]["status"], rows[victim]["title"]) == ("PROCESSING", "")
    else:
        assert (rows[victim]["status"], rows[victim]["title"]) == ("PROCESSING", "t")
    await assert_read_model_is_fold_of_log(env)
    verify = cli(env, "projections", "verify")
    assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]
    assert "0 difference(s)" in verify.stderr

    assert proj.terminate(30) == 0
    out = proj.output()
    assert "1 parked" in out.splitlines()[-1], out[-2000:]


async def test_several_refused_records_in_one_batch_are_each_found(env: Env) -> None:
    """Split down to single records, across partitions, with good records between."""
    ids = [uuid.uuid4() for _ in range(300)]
    wide = set(ids[7::50])  # six records Postgres refuses, spread through the batch
    producer = EventProducer(bootstrap=env.bootstrap, topic=env.topic, timeout_s=10)
    await producer.start()
    poisons: set[tuple[int, int]] = set()
    try:
        for t in ids:
            if t in wide:
                pos: Position = await producer.append_raw(env.topic, str(t).encode(), raw_event(
                    "task.created", t, {"title": "wide", "payload": {"n": -WIDE}}, version=2))
                poisons.add((pos.partition, pos.offset))
            else:
                await producer.append([created(t)])
    finally:
        await producer.stop()
    records = await env.read_log()
    ends = {r.partition: r.offset for r in records}
    proj = env.proc("projector")

    async def caught_up() -> bool:
        if not proj.alive():
            raise AssertionError(f"the projector exited:\n{proj.output()[-3000:]}")
        return await checkpoints(env) == ends

    await wait_until(caught_up, timeout=60, what="the projector to pass the poison records")
    rows = await tasks(env)
    assert set(rows) == set(ids) - wide
    assert {(p["partition"], p["offset"]) for p in map(orjson.loads, cli(
        env, "projections", "dead-letters").stdout.splitlines())} == poisons
    assert len(await journal(env)) == len(ids) - len(wide)
    await assert_read_model_is_fold_of_log(env)
    assert cli(env, "projections", "verify").returncode == 0
    # A rebuild meets the same records, parks them again and swaps in the same model.
    rebuilt = cli(env, "projections", "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert {(p["partition"], p["offset"], p["reason"]) for p in map(orjson.loads, cli(
        env, "projections", "dead-letters").stdout.splitlines())} == {
        (p, o, "write") for p, o in poisons}
    assert cli(env, "projections", "verify").returncode == 0
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        text = (await c.get("/metrics")).text
    assert (f'taskflow_projector_parked_records{{projection="{constants.PROJECTION}",'
            f'reason="write"}} {float(len(wide))}') in text


async def test_a_refused_batch_in_the_pipeline_makes_the_next_batch_fold_again(
        env: Env) -> None:
    """Batch N+1 is folded on N's states before N commits. When N is refused and split,
    N+1 must be folded again from what was committed: folded on N's states, a task whose
    task.created was parked in N would carry its title and payload into N+1.

    One partition and batches of 8, with each refused task.created followed at once by
    that task's next event, at every position in a batch: some fall in the next batch.
    """
    ids: list[uuid.UUID] = []
    while len(ids) < 64:  # tasks of partition 0 only, so that batches are runs of the log
        t = uuid.uuid4()
        if partition_for(t, 6) == 0:
            ids.append(t)
    wide = set(ids[::7])
    producer = EventProducer(bootstrap=env.bootstrap, topic=env.topic, timeout_s=10)
    await producer.start()
    poisons: set[tuple[int, int]] = set()
    try:
        for t in ids:
            nxt = new_event(TaskProcessing(worker_id="w"), task_id=t,
                            source="taskflow/worker/w", attempt=1)
            if t in wide:
                pos = await producer.append_raw(env.topic, str(t).encode(), raw_event(
                    "task.created", t, {"title": "wide", "payload": {"n": WIDE}}, version=2))
                poisons.add((pos.partition, pos.offset))
                await producer.append([nxt])
            else:
                await producer.append([created(t), nxt])
    finally:
        await producer.stop()
    ends = {r.partition: r.offset for r in await env.read_log()}
    proj = env.proc("projector", TASKFLOW_PROJECTOR_BATCH_MAX="8")

    async def caught_up() -> bool:
        if not proj.alive():
            raise AssertionError(f"the projector exited:\n{proj.output()[-3000:]}")
        return await checkpoints(env) == ends

    await wait_until(caught_up, timeout=60, what="the projector to pass the poison records")
    assert {(p["partition"], p["offset"]) for p in map(orjson.loads, cli(
        env, "projections", "dead-letters").stdout.splitlines())} == poisons
    rows = await tasks(env)
    assert set(rows) == set(ids)
    assert all(rows[t]["status"] == "PROCESSING" for t in ids)
    assert all(rows[t]["title"] == "" and orjson.loads(rows[t]["payload"]) == {} for t in wide)
    await assert_read_model_is_fold_of_log(env)
    assert cli(env, "projections", "verify").returncode == 0
    assert proj.terminate(30) == 0
    assert f"{len(wide)} parked" in proj.output().splitlines()[-1]


def test_only_errors_that_blame_a_row_park_a_record() -> None:
    from asyncpg import exceptions as pg

    from projector.store import refused

    for exc in (pg.DataError("x"), pg.NumericValueOutOfRangeError("x"),
                pg.UntranslatableCharacterError("x"), pg.UniqueViolationError("x"),
                pg.ProgramLimitExceededError("x"), ValueError("x"), OverflowError("x")):
        assert refused(exc), exc
    for exc in (pg.CannotConnectNowError("x"), pg.TooManyConnectionsError("x"),
                pg.ConnectionDoesNotExistError("x"), pg.AdminShutdownError("x"),
                pg.ConnectionFailureError("x"), pg.InterfaceError("connection is closed"),
                pg.SerializationError("x"), pg.DeadlockDetectedError("x"),
                pg.QueryCanceledError("x"), pg.UndefinedTableError("x"),
                ConnectionResetError(), TimeoutError(), KeyError("x")):
        assert not refused(exc), exc


def test_a_parked_record_error_is_always_storable() -> None:
    from projector.store import storable_text

    assert storable_text("plain é") == "plain é"
    assert storable_text("a\x00b\ud800c") == "a\\x00b\\ud800c"
    text = storable_text("\x00\udfff")
    assert "\x00" not in text and text.encode()  # encodes as UTF-8: no lone surrogate


async def _poison_then_task(env: Env, worker: Any, poison_value: bytes,
                            timeout: float) -> Any:
    """Write ``poison_value`` and then a task.created in the same partition; wait until
    the worker has finished that task (alive all along). Returns the poison's metadata."""
    producer = EventProducer(bootstrap=env.bootstrap, topic=env.topic, timeout_s=10)
    await producer.start()
    try:
        tid = uuid.uuid4()  # its task.created follows the poison in the same partition
        poison = await producer.append_raw(env.topic, str(tid).encode(), poison_value)
        await producer.append([created(tid, "after the poison")])
    finally:
        await producer.stop()

    async def done() -> bool:
        if not worker.alive():
            raise AssertionError(f"the worker exited:\n{worker.output()[-3000:]}")
        return any(ev.subject == tid and ev.type is EventType.DONE
                   for _, ev in await env.log_events())

    await wait_until(done, timeout=timeout, what="the task after the poison record to finish")
    return poison


async def _the_dead_letter(env: Env) -> Any:
    """The one record in the worker's dead-letter topic."""
    reader = LogReader(bootstrap=env.bootstrap,
                       topic=env.topic + constants.DEAD_LETTER_TOPIC_SUFFIX)
    await reader.start()
    try:
        reader.seek(0, 0)
        [parked] = await wait_until(lambda: reader.poll(timeout_ms=500), timeout=30,
                                    what="the dead-letter record")
    finally:
        await reader.stop()
    return parked


# A record near the broker's size limit: with the dead-letter headers added, a whole copy
# would not fit, and the lane would fail on it at every attempt.
NEAR_LIMIT = b"\x00" + b"x" * 1_048_300


@pytest.mark.parametrize("poison_value", [b"\x00 not a CloudEvent", NEAR_LIMIT],
                         ids=["small", "near-the-size-limit"])
async def test_worker_without_a_dead_letter_topic_parks_and_keeps_running(
        env: Env, poison_value: bytes) -> None:
    worker = env.proc("worker")
    poison = await _poison_then_task(env, worker, poison_value, timeout=60)
    parked = await _the_dead_letter(env)
    headers = dict(parked.headers)
    assert headers[constants.HEADER_DLT_OFFSET] == str(poison.offset).encode()
    if len(poison_value) > constants.DLT_VALUE_MAX:  # cut, saying how long it was
        assert parked.value == poison_value[:constants.DLT_VALUE_MAX]
        assert headers[constants.HEADER_DLT_TRUNCATED] == str(len(poison_value)).encode()
    else:
        assert parked.value == poison_value
        assert constants.HEADER_DLT_TRUNCATED not in headers
    assert worker.alive()
    assert "stopped" not in worker.output()  # no lane failed on the way


async def test_migrate_creates_the_dead_letter_topic(env: Env) -> None:
    res = cli(env, "migrate")
    assert res.returncode == 0, res.stderr[-3000:]
    dlt = env.topic + constants.DEAD_LETTER_TOPIC_SUFFIX
    assert f"created topic {dlt}" in res.stderr
    assert await ensure_topic(env.bootstrap, dlt, 1) is False  # it exists already


async def test_stack_up_bootstrap_creates_the_dead_letter_topic(env: Env) -> None:
    """What ``taskflow stack up`` does once Kafka and Postgres run (starting them is left
    out: the shared stack is up, and this must not touch it): the event topic's dead-letter,
    schedule, webhook and workflow topics are made with it."""
    companions = [schedule_topic(env.topic), webhooks.topic_for(env.topic),
                  workflow_topic(env.topic)]
    try:
        res = python(env, "-c", "import asyncio; from cli.main import _bootstrap; "
                     "asyncio.run(_bootstrap(1, 1))")
        assert res.returncode == 0, res.stderr[-3000:]
        dlt = env.topic + constants.DEAD_LETTER_TOPIC_SUFFIX
        for name in (dlt, *companions):
            assert f"stack: created topic {name}" in res.stderr
            assert await ensure_topic(env.bootstrap, name, 1) is False
    finally:
        await delete_topics(env.bootstrap, companions)


async def test_worker_whose_dead_letter_topic_vanished_recreates_it(env: Env) -> None:
    """Deleted while the worker runs: the lane that meets the next poison record fails,
    and the worker built in its place creates the topic again at start."""
    dlt = env.topic + constants.DEAD_LETTER_TOPIC_SUFFIX
    worker = env.proc("worker")
    await wait_until(lambda: asyncio.to_thread(lambda: "assigned" in worker.output()),
                     timeout=60, what="the worker to start")
    await delete_topics(env.bootstrap, [dlt])
    await _poison_then_task(env, worker, b"\x00 not a CloudEvent", timeout=90)
    parked = await _the_dead_letter(env)
    assert parked.value == b"\x00 not a CloudEvent"
    assert worker.alive()


def test_the_worker_parks_a_created_task_exactly_when_the_projector_would() -> None:
    """``row_refusal``, the worker's test of a ``task.created`` that came past the API,
    refuses what the projector's write refuses and nothing the projector stores: an
    integer up to 2**64-1 or a negative zero is stored (and so run), however the API
    refuses them."""
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    for stored in ({"n": 2**64 - 1}, {"n": -(2**63)}, {"z": -0.0}, {"f": 4.73643996407975e16}):
        assert row_refusal("t", stored) is None, stored
        jsonb_text(stored)  # what the projector writes
    for refused_payload in ({"n": 2**64}, {"n": -(2**63) - 1}, {"s": "\ud800"}, {"d": deep}):
        assert row_refusal("t", refused_payload), refused_payload
        with pytest.raises((TypeError, ValueError)):
            jsonb_text(refused_payload)
    assert row_refusal("\udc00", {})
