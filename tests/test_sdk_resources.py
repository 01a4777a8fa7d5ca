"""The SDK's schedule and webhook calls against the real stack (API, projector, worker,
scheduler, notifier as processes), and its signature check against real deliveries."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from taskflow_client import AsyncTaskFlow, Conflict, NotFound, TaskFlow, TaskSpec
from taskflow_client.webhooks import InvalidSignature, verify

from events import webhooks as wh
from events.log import delete_topics
from events.schedules import schedule_topic
from tests.helpers import Env, free_port, wait_until
from tests.webhook_receiver import Receiver


@pytest.fixture
async def full_env(env: Env) -> AsyncIterator[Env]:
    env.extra.update({"TASKFLOW_OUTBOUND_ALLOW": "127.0.0.1"})
    try:
        yield env
    finally:
        env.stop_all()
        await delete_topics(env.bootstrap, [schedule_topic(env.topic),
                                            wh.topic_for(env.topic)])


async def test_schedules_through_the_sdk(full_env: Env) -> None:
    env = full_env
    for name in ("projector", "worker", "scheduler"):
        env.proc(name)
    await env.api()
    task = TaskSpec("tick", "echo", {"message": "tock"})
    async with AsyncTaskFlow(env.base_url) as tf:
        made = await tf.create_schedule("beat", task, cron="0 0 1 1 *", timezone="Europe/Berlin")
        sid = made["schedule_id"]
        assert uuid.UUID(sid) and made["next_run_at"]

        async def projected() -> bool:  # the first write waits for the scheduler to join
            try:
                return bool(await tf.get_schedule(sid))
            except NotFound:
                return False
        await wait_until(projected, timeout=60, what="the schedule's projection")
        got = await tf.get_schedule(sid)
        assert (got["name"], got["cron"], got["timezone"]) == ("beat", "0 0 1 1 *",
                                                               "Europe/Berlin")
        assert got["task"]["payload"] == {"message": "tock"}
        other = (await tf.create_schedule("other", {"title": "x"}, every_s=3600,
                                          idempotency_key="other-1"))["schedule_id"]
        again = await tf.create_schedule("other", {"title": "x"}, every_s=3600,
                                         idempotency_key="other-1")
        assert again["schedule_id"] == other  # the key made no second schedule

        async def listed() -> set[str]:  # one per page: the iterator follows next_cursor
            return {s["schedule_id"] async for s in tf.schedules(limit=1)}
        assert await wait_until(lambda: _has(listed, {sid, other}), timeout=60) == {sid, other}

        assert (await tf.pause_schedule(sid))["paused"] is True
        with pytest.raises(Conflict):
            await tf.pause_schedule(sid)
        assert (await tf.resume_schedule(sid))["paused"] is False

        fired = await tf.trigger_schedule(sid)
        done = await tf.wait(fired["task_id"], timeout=60)
        assert (done.status, done.result, done.schedule_id) == ("DONE", "tock", sid)
        runs = await tf.schedule_runs(sid)
        assert [r["task_id"] for r in runs] == [fired["task_id"]]

        changed = await tf.update_schedule(sid, name="beat2", task=TaskSpec("tick2"))
        assert changed["schedule_id"] == sid
        got = await tf.get_schedule(sid)
        assert (got["name"], got["task"]["title"]) == ("beat2", "tick2")

        await tf.delete_schedule(sid)
        await tf.delete_schedule(other)
        with pytest.raises(NotFound):
            await tf.get_schedule(sid)


async def test_webhooks_through_the_sdk_and_its_signature_check(full_env: Env) -> None:
    env = full_env
    receiver = Receiver(free_port())
    await receiver.start()
    try:
        for name in ("projector", "worker", "notifier"):
            env.proc(name)
        await env.api()
        with TaskFlow(env.base_url) as tf:  # the sync client, on its own thread
            hook = tf.create_webhook(receiver.url("/h"), ["task.done"], description="sdk")
            hid, secret = hook["webhook_id"], hook["secret"]
            receiver.secrets["/h"] = secret
            assert tf.get_webhook(hid)["description"] == "sdk"
            assert [w["webhook_id"] for w in tf.webhooks()] == [hid]
            h = tf.submit("hooked", payload={"message": "hi"})
            tf.wait(h.id, timeout=60)

            async def delivered() -> bool:
                return any(r.body["subject"] == h.id for r in receiver.received)
            await wait_until(delivered, timeout=60, what="the delivery")
            got = next(r for r in receiver.received if r.body["subject"] == h.id)
            verify(secret, got.headers, got.raw)  # what a receiver using the SDK does
            with pytest.raises(InvalidSignature):
                verify(secret, got.headers, got.raw.replace(b"hi", b"ho"))
            with pytest.raises(InvalidSignature):
                verify(tf.rotate_webhook_secret(hid), got.headers, got.raw)
            with pytest.raises(InvalidSignature):
                verify(secret, got.headers, got.raw, now=float(got.headers["webhook-timestamp"])
                       + 3600)

            [d] = [d for d in tf.deliveries(hid) if d["task_id"] == h.id]
            assert d["status"] == "delivered" and d["attempts"] >= 1
            receiver.secrets["/h"] = ""  # the redelivery is signed with the new secret
            again = tf.redeliver(hid, d["delivery_id"])
            assert again["delivery_id"] == d["delivery_id"]
            tf.delete_webhook(hid)
            with pytest.raises(NotFound):
                tf.get_webhook(hid)
    finally:
        await receiver.stop()


async def _has(read: Callable[[], Awaitable[set[str]]], want: set[str]) -> set[str] | None:
    got = await read()
    return got if got == want else None
