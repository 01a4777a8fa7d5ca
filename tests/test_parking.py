"""Park, never stop: a record a consumer cannot handle is parked and the partition moves on.

The worker parks what it cannot decode in ``<topic>.dlt``, and that topic exists wherever
the event topic does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

from events import constants
from events.log import EventProducer, LogReader, ensure_topic
from events.models import CloudEvent, EventType, TaskCreated, new_event
from tests.helpers import ROOT, Env, wait_until


def cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT,
                          env={**os.environ, **env.vars}, capture_output=True, text=True,
                          timeout=300, check=False)


def created(tid: uuid.UUID, title: str = "t") -> CloudEvent:
    return new_event(TaskCreated(title=title, payload={"message": title}), task_id=tid,
                     source=constants.API_SOURCE)


async def test_worker_without_a_dead_letter_topic_parks_and_keeps_running(env: Env) -> None:
    dlt = env.topic + constants.DEAD_LETTER_TOPIC_SUFFIX
    worker = env.proc("worker")
    producer = EventProducer(bootstrap=env.bootstrap, topic=env.topic, timeout_s=10)
    await producer.start()
    try:
        tid = uuid.uuid4()  # its task.created follows the poison in the same partition
        poison = await producer.append_raw(env.topic, str(tid).encode(),
                                           b"\x00 not a CloudEvent")
        await producer.append([created(tid, "after the poison")])
    finally:
        await producer.stop()

    async def done() -> bool:
        if not worker.alive():
            raise AssertionError(f"the worker exited:\n{worker.output()[-3000:]}")
        return any(ev.subject == tid and ev.type is EventType.DONE
                   for _, ev in await env.log_events())

    await wait_until(done, timeout=60, what="the task after the poison record to finish")
    reader = LogReader(bootstrap=env.bootstrap, topic=dlt)
    await reader.start()
    try:
        reader.seek(0, 0)
        [parked] = await wait_until(lambda: reader.poll(timeout_ms=500), timeout=30,
                                    what="the dead-letter record")
    finally:
        await reader.stop()
    assert parked.value == b"\x00 not a CloudEvent"
    headers = dict(parked.headers)
    assert headers[constants.HEADER_DLT_OFFSET] == str(poison.offset).encode()
    assert worker.alive()
    assert "stopped" not in worker.output()  # no lane failed on the way


async def test_migrate_creates_the_dead_letter_topic(env: Env) -> None:
    res = cli(env, "migrate")
    assert res.returncode == 0, res.stderr[-3000:]
    dlt = env.topic + constants.DEAD_LETTER_TOPIC_SUFFIX
    assert f"created topic {dlt}" in res.stderr
    assert await ensure_topic(env.bootstrap, dlt, 1) is False  # it exists already
