"""The notifier on the real stack, delivering to a real receiver on 127.0.0.1 that verifies
every delivery with the ``standardwebhooks`` package."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from events import webhooks as wh
from events.log import delete_topics
from tests.helpers import Env, free_port, wait_until
from tests.test_webhooks import cli, hook_events
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.slow

FAST_RETRIES = {"TASKFLOW_NOTIFIER_RETRY_BASE_S": "0.5", "TASKFLOW_NOTIFIER_RETRY_CAP_S": "2",
                "TASKFLOW_NOTIFIER_MAX_ATTEMPTS": "100"}


@pytest.fixture
async def hooks_env(env: Env) -> AsyncIterator[Env]:
    env.extra.update({"TASKFLOW_OUTBOUND_ALLOW": "127.0.0.1",
                      "TASKFLOW_OUTBOUND_READ_TIMEOUT_S": "5"})
    yield env
    await delete_topics(env.bootstrap, [wh.topic_for(env.topic)])


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(free_port())
    yield r
    await r.stop()


async def subscribe(c: httpx.AsyncClient, url: str, events: list[str]) -> tuple[str, str]:
    r = await c.post("/webhooks", json={"url": url, "events": events})
    assert r.status_code == 201, r.text
    hid = r.json()["webhook_id"]

    async def projected() -> bool:  # a subscription applies once it is projected
        return (await c.get(f"/webhooks/{hid}")).status_code == 200

    await wait_until(projected, what="the webhook's projection")
    return hid, r.json()["secret"]


async def submit(c: httpx.AsyncClient, n: int, **task: Any) -> list[str]:
    body = {"title": "t", "type": "echo", "payload": {"message": "hi"}, **task}
    r = await c.post("/tasks:batch", json={"tasks": [body] * n})
    assert r.status_code == 202, r.text
    return [t["task_id"] for t in r.json()["items"]]


async def done_event_ids(env: Env, task_ids: list[str], etype: str = "task.done") -> set[str]:
    wanted = set(task_ids)
    return {str(ev.id) for _, ev in await env.log_events()
            if str(ev.subject) in wanted and ev.type.value == etype}


async def every_done(env: Env, task_ids: list[str]) -> set[str]:
    """The ``task.done`` event ids of every one of these tasks, once all are done."""
    async def every() -> set[str]:
        ids = await done_event_ids(env, task_ids)
        return ids if len(ids) == len(task_ids) else set()

    return await wait_until(every, what=f"{len(task_ids)} tasks done")


def assert_duplicates_share_webhook_id(receiver: Receiver, path: str, hid: str) -> None:
    ids: dict[str, set[str]] = defaultdict(set)
    for r in receiver.received:
        if r.path == path:
            ids[r.body["id"]].add(r.msg_id)
    for eid, msg_ids in ids.items():
        assert msg_ids == {wh.message_id(wh.delivery_id(uuid.UUID(hid), uuid.UUID(eid)))}


async def deliveries(c: httpx.AsyncClient, hid: str) -> list[dict[str, Any]]:
    r = await c.get(f"/webhooks/{hid}/deliveries", params={"limit": 1000})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def test_receiver_outage_loses_nothing(hooks_env: Env, receiver: Receiver) -> None:
    """The receiver refuses connections for 20 s, then recovers: every task.done is
    delivered and verified, and any duplicates share their webhook-id."""
    env = hooks_env
    env.extra.update(FAST_RETRIES)
    env.proc("projector")
    env.proc("worker")
    env.proc("notifier")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        hid, secret = await subscribe(c, receiver.url("/hook"), ["task.done"])
        receiver.secrets["/hook"] = secret
        tids = await submit(c, 20)
        await asyncio.sleep(20)  # nothing listens on the port: every attempt is refused

        async def retrying() -> bool:
            ds = await deliveries(c, hid)
            return len(ds) == 20 and all(d["status"] == "retrying" for d in ds)

        await wait_until(retrying, what="20 deliveries retrying")
        ds = await deliveries(c, hid)
        assert all(d["attempts"] >= 2 and d["last_status_code"] is None
                   and d["last_error"] for d in ds)
        await receiver.start()
        expected = await every_done(env, tids)

        async def all_received() -> bool:
            return receiver.event_ids("/hook") == expected

        await wait_until(all_received, timeout=60, what="every task.done delivered")
        assert receiver.rejected == []
        assert_duplicates_share_webhook_id(receiver, "/hook", hid)

        async def delivered() -> bool:
            ds = await deliveries(c, hid)
            return len(ds) == 20 and all(d["status"] == "delivered" for d in ds)

        await wait_until(delivered, what="deliveries shown as delivered")
        assert all(d["last_status_code"] == 204 for d in await deliveries(c, hid))
    attempts = [e for e in await hook_events(env)
                if e.type is wh.HookType.DELIVERY_ATTEMPTED]
    outcomes = {e.data["outcome"] for e in attempts}
    assert outcomes == {"retrying", "delivered"}
    assert len(attempts) > 40  # every attempt, failed ones too, is an event


async def test_kill_9_of_a_notifier_during_deliveries(hooks_env: Env,
                                                      receiver: Receiver) -> None:
    env = hooks_env
    env.extra.update(FAST_RETRIES)
    env.extra["TASKFLOW_NOTIFIER_ENDPOINT_CONCURRENCY"] = "1"
    env.proc("projector")
    env.proc("worker")
    first = env.proc("notifier")
    env.proc("notifier")  # a second instance of the group
    await env.api()
    receiver.delay_s["/hook"] = 0.1
    await receiver.start()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        hid, secret = await subscribe(c, receiver.url("/hook"), ["task.done"])
        receiver.secrets["/hook"] = secret
        tids = await submit(c, 60)

        async def some() -> bool:
            return len(receiver.received) >= 5

        await wait_until(some, what="the first deliveries")
        first.kill9()
        expected = await every_done(env, tids)

        async def all_received() -> bool:
            return receiver.event_ids("/hook") == expected

        await wait_until(all_received, timeout=90, what="every task.done delivered")
        assert receiver.rejected == []
        assert_duplicates_share_webhook_id(receiver, "/hook", hid)


async def test_dead_letter_notification_and_dead_lettered_delivery(
        hooks_env: Env, receiver: Receiver) -> None:
    env = hooks_env
    env.extra.update({"TASKFLOW_NOTIFIER_RETRY_BASE_S": "0.05",
                      "TASKFLOW_NOTIFIER_RETRY_CAP_S": "0.1",
                      "TASKFLOW_NOTIFIER_MAX_ATTEMPTS": "3"})
    env.proc("projector")
    env.proc("worker")
    env.proc("notifier")
    await env.api()
    receiver.status["/broken"] = 500
    await receiver.start()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        hid, secret = await subscribe(c, receiver.url("/dead"), ["task.dead_lettered"])
        receiver.secrets["/dead"] = secret
        broken, secret2 = await subscribe(c, receiver.url("/broken"), ["task.done"])
        receiver.secrets["/broken"] = secret2
        [failing] = await submit(c, 1, type="fail", max_attempts=1)
        [ok] = await submit(c, 1)

        async def notified() -> bool:
            return bool(receiver.event_ids("/dead"))

        await wait_until(notified, what="the dead-letter notification")
        [got] = [r for r in receiver.received if r.path == "/dead"]
        assert got.body["type"] == "task.dead_lettered" and got.body["subject"] == failing
        assert_duplicates_share_webhook_id(receiver, "/dead", hid)

        async def dead() -> list[dict[str, Any]]:
            return [d for d in await deliveries(c, broken) if d["status"] == "dead_lettered"]

        [d] = await wait_until(dead, what="the failing delivery dead-lettered")
        assert d["attempts"] == 3 and d["last_status_code"] == 500
        assert d["task_id"] == ok
        # Redelivery sends it again, under the same webhook-id, with a fresh round.
        receiver.status["/broken"] = 200
        r = await c.post(f"/webhooks/{broken}/deliveries/{d['delivery_id']}:redeliver")
        assert r.status_code == 202, r.text

        async def redelivered() -> bool:
            return bool(receiver.event_ids("/broken"))

        await wait_until(redelivered, what="the redelivery")
        assert_duplicates_share_webhook_id(receiver, "/broken", broken)

        async def shown() -> bool:
            [d2] = await deliveries(c, broken)
            return bool(d2["status"] == "delivered" and d2["attempts"] == 4)

        await wait_until(shown, what="the redelivery shown")
        r = await c.post(f"/webhooks/{broken}/deliveries/{uuid.uuid4()}:redeliver")
        assert r.status_code == 404


async def test_a_slow_endpoint_does_not_delay_the_others(hooks_env: Env,
                                                         receiver: Receiver) -> None:
    env = hooks_env
    env.extra["TASKFLOW_NOTIFIER_ENDPOINT_CONCURRENCY"] = "2"
    env.proc("projector")
    env.proc("worker")
    env.proc("notifier")
    await env.api()
    receiver.delay_s["/slow"] = 8  # past the notifier's read timeout (5 s)
    await receiver.start()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        slow, s1 = await subscribe(c, receiver.url("/slow"), ["task.done"])
        _, s2 = await subscribe(c, receiver.url("/fast"), ["task.done"])
        receiver.secrets.update({"/slow": s1, "/fast": s2})
        tids = await submit(c, 20)
        expected = await every_done(env, tids)

        async def fast_all() -> bool:
            return receiver.event_ids("/fast") == expected

        await wait_until(fast_all, what="every delivery to the fast endpoint")
        assert receiver.event_ids("/slow") == set()  # still stuck in its first requests

        async def timed_out() -> bool:  # the read timeout ended the slow requests
            return any(d["attempts"] >= 1 and d["last_error"] == "timeout: ReadTimeout"
                       for d in await deliveries(c, slow))

        await wait_until(timed_out, timeout=60, what="a slow delivery's read timeout")


async def test_connect_time_check_refuses_what_the_api_allowed(
        hooks_env: Env, receiver: Receiver) -> None:
    """The API accepted the URL (127.0.0.1 allowed there); the notifier, where it is not
    allowed, resolves again before connecting and refuses."""
    env = hooks_env
    env.extra.update({"TASKFLOW_NOTIFIER_RETRY_BASE_S": "0.05",
                      "TASKFLOW_NOTIFIER_MAX_ATTEMPTS": "2"})
    env.proc("projector")
    env.proc("worker")
    env.proc("notifier", TASKFLOW_OUTBOUND_ALLOW="")
    await env.api()
    await receiver.start()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        hid, secret = await subscribe(c, receiver.url("/hook"), ["task.done"])
        receiver.secrets["/hook"] = secret
        await submit(c, 1)

        async def dead() -> list[dict[str, Any]]:
            return [d for d in await deliveries(c, hid) if d["status"] == "dead_lettered"]

        [d] = await wait_until(dead, what="the refused delivery dead-lettered")
        assert d["last_error"].startswith("refused") and d["last_status_code"] is None
    assert receiver.received == [] and receiver.rejected == []


async def test_a_task_callback_url_gets_that_tasks_terminal_events(
        hooks_env: Env, receiver: Receiver) -> None:
    env = hooks_env
    env.proc("projector")
    env.proc("worker")
    env.proc("notifier")
    await env.api()
    await receiver.start()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        r = await c.post("/tasks", json={"title": "cb", "type": "echo",
                                         "payload": {"message": "hi"},
                                         "callback_url": receiver.url("/cb")})
        assert r.status_code == 202, r.text
        tid, cb = r.json()["task_id"], r.json()["callback"]
        receiver.secrets["/cb"] = cb["secret"]
        await submit(c, 3)  # other tasks: not for this callback

        async def got() -> bool:
            return bool(receiver.event_ids("/cb"))

        await wait_until(got, what="the callback")
        await asyncio.sleep(1)  # room for anything that should not come
        assert [(r.body["type"], r.body["subject"]) for r in receiver.received] == [
            ("task.done", tid)]
        assert receiver.rejected == []
        assert_duplicates_share_webhook_id(receiver, "/cb", cb["webhook_id"])
        # A task's callback is not a tenant subscription: not listed, but readable.
        assert (await c.get("/webhooks")).json()["items"] == []
        assert (await c.get(f"/webhooks/{cb['webhook_id']}")).json()["task_id"] == tid
        for bad in ({"callback_url": "http://169.254.169.254/"}, {"callback_url": "ftp://x/"}):
            r = await c.post("/tasks", json={"title": "x", **bad})
            assert r.status_code == 422, r.text
        r = await c.post("/tasks:batch", json={"tasks": [
            {"title": "x", "callback_url": receiver.url("/cb")}]})
        assert r.status_code == 422, r.text


async def test_each_tenant_receives_only_its_own_tasks_events(hooks_env: Env,
                                                              receiver: Receiver) -> None:
    """Two tenants subscribe to the same event type: each receiver gets exactly its own
    tenant's ``task.done`` events, never the other's."""
    env = hooks_env
    env.proc("projector")
    env.proc("worker")
    env.proc("notifier")
    await env.api(None, TASKFLOW_AUTH="true")
    await receiver.start()
    keys = {}
    for tenant in ("acme", "globex"):
        res = cli(env, "keys", "create", "--tenant", tenant)
        assert res.returncode == 0, res.stderr
        keys[tenant] = {"Authorization": f"Bearer {res.stdout.strip()}"}
    tids: dict[str, list[str]] = {}
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        for tenant, h in keys.items():
            r = await c.post("/webhooks", headers=h, json={
                "url": receiver.url(f"/{tenant}"), "events": ["task.done"]})
            assert r.status_code == 201, r.text
            receiver.secrets[f"/{tenant}"] = r.json()["secret"]
        for tenant, h in keys.items():
            r = await c.post("/tasks:batch", headers=h, json={"tasks": [
                {"title": "t", "type": "echo", "payload": {"message": tenant}}] * 5})
            assert r.status_code == 202, r.text
            tids[tenant] = [t["task_id"] for t in r.json()["items"]]

    async def all_done() -> dict[str, set[str]] | None:
        got = {t: await done_event_ids(env, ids) for t, ids in tids.items()}
        return got if all(len(ids) == 5 for ids in got.values()) else None

    want = await wait_until(all_done, what="tasks done")
    assert want is not None

    async def delivered() -> bool:
        return all(receiver.event_ids(f"/{t}") >= want[t] for t in keys)

    await wait_until(delivered, timeout=60, what="each tenant's deliveries")
    await asyncio.sleep(1)  # room for a stray delivery to the other tenant
    assert {t: receiver.event_ids(f"/{t}") for t in keys} == want
    assert receiver.rejected == []
