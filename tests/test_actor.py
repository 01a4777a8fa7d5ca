"""Actor on every command: each event a command writes names who asked, and nothing else.

* ``task.created``, cancel, retry, ``dlq redrive``, and every schedule and webhook change
  carry the CloudEvents extension ``actor``: the API key id, never the secret;
* the events services write on their own (worker, scheduler) carry none;
* with auth off the actor is ``anonymous``; the CLI records ``--actor`` or ``cli:<user>``;
* the task's history, ``created_by``, the schedule's and the webhook's event lists and
  ``taskflow replay`` show it;
* ``TASKFLOW_WORKER_SOURCE`` replaces the worker's host name in ``source``.
"""

from __future__ import annotations

import getpass
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from playwright.async_api import Browser

from events import webhooks as wh
from events.log import Record, delete_topics
from events.schedules import schedule_topic
from tests.helpers import Env, wait_until
from tests.test_api import cli
from tests.test_dashboard import browser, open_dashboard
from tests.test_projections import cli as run_cli

__all__ = ["browser"]  # the fixture, for the dashboard's check

ALLOW = {"TASKFLOW_OUTBOUND_ALLOW": "127.0.0.1"}


@pytest.fixture
async def actor_env(env: Env) -> AsyncIterator[Env]:
    """``env`` with its schedule and webhook topics removed afterwards as well."""
    yield env
    await delete_topics(env.bootstrap, [schedule_topic(env.topic), wh.topic_for(env.topic)])


def new_key(env: Env, tenant: str) -> tuple[str, str, dict[str, str]]:
    """(key id, secret, headers) of a fresh key of ``tenant``."""
    key = cli(env, "keys", "create", "--tenant", tenant)
    key_id, _, secret = key.removeprefix("tfk_").partition("_")
    assert key_id and secret
    return key_id, secret, {"Authorization": f"Bearer {key}"}


def docs(records: list[Record], subject: str) -> list[dict[str, Any]]:
    """The JSON of the records about ``subject``, in log order."""
    out = [orjson.loads(r.value or b"") for r in records]
    return [d for d in out if d.get("subject") == subject]


async def status_of(c: httpx.AsyncClient, tid: str, headers: dict[str, str],
                    *want: str) -> dict[str, Any] | None:
    r = await c.get(f"/tasks/{tid}", headers=headers)
    doc: dict[str, Any] = r.json()
    return doc if r.status_code == 200 and doc["status"] in want else None


async def test_every_command_records_its_key_id_and_services_none(actor_env: Env) -> None:
    env = actor_env
    env.extra.update(ALLOW)
    env.proc("projector")
    env.proc("worker")
    env.proc("scheduler")
    await env.api(TASKFLOW_AUTH="true")
    a_id, a_secret, a = new_key(env, "acme")
    a2_id, a2_secret, a2 = new_key(env, "acme")  # the same tenant, another key
    _, _, b = new_key(env, "globex")
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        # Submit with key A; the worker runs it.
        r = await c.post("/tasks", json={"title": "hello", "payload": {"message": "hi"}},
                         headers=a)
        assert r.status_code == 202, r.text
        tid = r.json()["task_id"]
        done = await wait_until(lambda: status_of(c, tid, a, "DONE"), timeout=30)
        assert done is not None and done["created_by"] == a_id

        # Cancel with A2: the actor is the key, not the tenant.
        r = await c.post("/tasks", json={"title": "long", "type": "sleep",
                                         "payload": {"seconds": 30}}, headers=a)
        slow = r.json()["task_id"]
        await wait_until(lambda: status_of(c, slow, a, "PENDING", "PROCESSING"), timeout=30)
        r = await c.post(f"/tasks/{slow}/cancel", headers=a2)
        assert r.status_code == 202, r.text

        # A failing task: retried by A over the API, then redriven from the command line.
        r = await c.post("/tasks", json={"title": "doomed", "type": "fail",
                                         "max_attempts": 1}, headers=a)
        bad = r.json()["task_id"]
        await wait_until(lambda: status_of(c, bad, a, "FAILED"), timeout=30)
        r = await c.post(f"/tasks/{bad}/retry", headers=a)
        assert r.status_code == 202, r.text

        await wait_until(lambda: _dead_at(c, bad, a, 2), timeout=30,
                         what="the retried task to fail again")
        run_cli(env, "dlq", "redrive", "--actor", "ops@example.com")
        await wait_until(lambda: _dead_at(c, bad, a, 3), timeout=30,
                         what="the redriven task to fail once more")
        run_cli(env, "dlq", "redrive")  # no --actor: cli:<login name>

        # A schedule's whole life, by A.
        r = await c.post("/schedules", headers=a, json={
            "name": "nightly", "every_s": 3600,
            "task": {"title": "t", "type": "echo", "payload": {"message": "m"}}})
        assert r.status_code == 201, r.text
        sid = r.json()["schedule_id"]
        assert (await c.patch(f"/schedules/{sid}", headers=a2,
                              json={"every_s": 7200})).status_code == 200
        assert (await c.post(f"/schedules/{sid}:pause", headers=a)).status_code == 200
        assert (await c.post(f"/schedules/{sid}:resume", headers=a)).status_code == 200
        r = await c.post(f"/schedules/{sid}:trigger", headers=a)
        assert r.status_code == 202, r.text
        fired = r.json()["task_id"]
        assert (await c.delete(f"/schedules/{sid}", headers=a2)).status_code == 204

        # A webhook's whole life, by A; its secret never shows in its history.
        r = await c.post("/webhooks", headers=a, json={"url": "http://127.0.0.1:9/hook",
                                                       "events": ["task.done"]})
        assert r.status_code == 201, r.text
        hid, hook_secret = r.json()["webhook_id"], r.json()["secret"]
        r = await c.post(f"/webhooks/{hid}:rotate-secret", headers=a2)
        assert r.status_code == 200, r.text
        rotated = r.json()["secret"]
        assert (await c.delete(f"/webhooks/{hid}", headers=a)).status_code == 204

        history = (await c.get(f"/tasks/{tid}/events", headers=a)).json()["items"]
        s_hist = await c.get(f"/schedules/{sid}/events", headers=a)
        w_hist = await c.get(f"/webhooks/{hid}/events", headers=a)
        # Another tenant's history answers as a missing one does.
        for kind, some in (("schedules", sid), ("webhooks", hid)):
            foreign = await c.get(f"/{kind}/{some}/events", headers=b)
            missing = await c.get(f"/{kind}/{uuid.uuid4()}/events", headers=b)
            assert foreign.status_code == missing.status_code == 404
            assert foreign.headers["content-type"].startswith("application/problem+json")
            assert (foreign.json()["title"], foreign.json()["status"]) == (
                missing.json()["title"], missing.json()["status"])

    records = await env.read_log()
    s_records = await env.read_log(schedule_topic(env.topic))
    w_records = await env.read_log(wh.topic_for(env.topic))
    # No secret of any key in any record, whichever topic.
    for rec in records + s_records + w_records:
        for secret in (a_secret, a2_secret):
            assert secret.encode() not in (rec.value or b"")

    task = docs(records, tid)
    assert [(d["type"], d.get("actor")) for d in task] == [
        ("task.created", a_id), ("task.processing", None), ("task.done", None)]
    assert all("actor" not in d for d in task[1:])  # left out, not null
    assert [d.get("actor") for d in docs(records, slow)
            if d["type"] == "task.cancel_requested"] == [a2_id]
    by_type: dict[str, list[str | None]] = {}
    for d in docs(records, bad):
        by_type.setdefault(d["type"], []).append(d.get("actor"))
    assert by_type["task.created"] == [a_id]
    assert by_type["task.redriven"] == [a_id, "ops@example.com", f"cli:{getpass.getuser()}"]
    assert set(by_type["task.failed"]) == set(by_type["task.dead_lettered"]) == {None}
    assert [d.get("actor") for d in docs(records, fired)][:1] == [a_id]  # a trigger

    schedule = docs(s_records, sid)
    changes = [(d["type"], d.get("actor")) for d in schedule if d["type"] != "schedule.fired"]
    assert changes == [("schedule.created", a_id), ("schedule.updated", a2_id),
                       ("schedule.paused", a_id), ("schedule.resumed", a_id),
                       ("schedule.deleted", a2_id)]
    assert all("actor" not in d for d in schedule if d["type"] == "schedule.fired")

    hook = [(d["type"], d.get("actor")) for d in docs(w_records, hid)]
    assert hook == [("webhook.created", a_id), ("webhook.secret_rotated", a2_id),
                    ("webhook.deleted", a_id)]

    # The histories show it, with their positions; the webhook's without its secrets.
    assert [(i["type"], i.get("actor")) for i in history] == [
        ("task.created", a_id), ("task.processing", None), ("task.done", None)]
    assert all("position" in i for i in history)
    assert s_hist.status_code == 200, s_hist.text
    assert [(i["type"], i["actor"]) for i in s_hist.json()["items"]] == changes
    assert w_hist.status_code == 200, w_hist.text
    assert [(i["type"], i["actor"]) for i in w_hist.json()["items"]] == hook
    assert hook_secret not in w_hist.text and rotated not in w_hist.text
    assert "position" in w_hist.json()["items"][0]

    # `taskflow replay` shows the actor, and filters by it.
    lines = [orjson.loads(x) for x in run_cli(env, "replay", "--task", tid).stdout.splitlines()]
    assert [x.get("actor") for x in lines] == [a_id, None, None]
    mine = run_cli(env, "replay", "--actor", a2_id).stdout.splitlines()
    assert [orjson.loads(x)["type"] for x in mine] == ["task.cancel_requested"]


async def _dead_at(c: httpx.AsyncClient, tid: str, headers: dict[str, str], n: int) -> bool:
    """The task is dead-lettered again, after its ``n``-th attempt."""
    got = await status_of(c, tid, headers, "FAILED")
    return got is not None and got["attempt"] == n and got["dead_lettered"]


async def test_auth_off_is_anonymous_and_the_services_source_is_configurable(
        actor_env: Env) -> None:
    env = actor_env
    env.proc("projector")
    env.proc("worker", TASKFLOW_WORKER_SOURCE="taskflow/worker/blue")
    env.proc("scheduler", TASKFLOW_SCHEDULER_SOURCE="taskflow/scheduler/s1")
    await env.api(TASKFLOW_AUTH="off")
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        r = await c.post("/tasks", json={"title": "open", "payload": {"message": "hi"}})
        assert r.status_code == 202, r.text
        tid = r.json()["task_id"]
        done = await wait_until(lambda: status_of(c, tid, {}, "DONE"), timeout=30)
        r = await c.post("/schedules", json={
            "name": "often", "every_s": 1,
            "task": {"title": "tick", "type": "echo", "payload": {"message": "m"}}})
        assert r.status_code == 201, r.text
        sid = r.json()["schedule_id"]

        async def fired() -> str | None:
            runs = (await c.get(f"/schedules/{sid}/runs")).json()["items"]
            done = [x for x in runs if x["status"] == "DONE"]
            return str(done[0]["task_id"]) if done else None

        tick = await wait_until(fired, timeout=30, what="a fire to run")
        assert tick is not None
        assert (await c.delete(f"/schedules/{sid}")).status_code == 204
    assert done is not None and done["created_by"] == "anonymous"
    records = await env.read_log()
    task = docs(records, tid)
    assert [(d["type"], d["source"], d.get("actor")) for d in task] == [
        ("task.created", "taskflow/api", "anonymous"),
        ("task.processing", "taskflow/worker/blue", None),
        ("task.done", "taskflow/worker/blue", None)]
    # The scheduler's fire is its own doing: no actor, and its configured source.
    fire = docs(records, tick)
    assert [(d["type"], d["source"], d.get("actor")) for d in fire] == [
        ("task.created", "taskflow/scheduler/s1", None),
        ("task.processing", "taskflow/worker/blue", None),
        ("task.done", "taskflow/worker/blue", None)]
    assert all(socket.gethostname() not in d["source"] for d in task + fire)
    schedule = docs(await env.read_log(schedule_topic(env.topic)), sid)
    assert {d["source"] for d in schedule if d["type"] == "schedule.fired"} == {
        "taskflow/scheduler/s1"}
    assert [d.get("actor") for d in schedule if d["type"] != "schedule.fired"] == [
        "anonymous", "anonymous"]


async def test_the_dashboard_says_who_submitted_and_who_acted(
        env: Env, browser: Browser) -> None:
    env.proc("projector")
    env.proc("worker")
    await env.api()  # auth off: the actor is anonymous
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        r = await c.post("/tasks", json={"title": "no message", "payload": {}})
        tid = r.json()["task_id"]
        await wait_until(lambda: _dead_at(c, tid, {}, 1), timeout=30, what="the task to fail")
        assert (await c.post(f"/tasks/{tid}/retry")).status_code == 202
        await wait_until(lambda: _dead_at(c, tid, {}, 2), timeout=30, what="it to fail again")
    dash = await open_dashboard(browser, env)
    page = dash.page
    await page.locator(dash.row(tid)).get_by_role("button", name="no message").click()
    await dash.until("document.querySelectorAll('#d-timeline li').length === 8")
    detail = page.locator("#detail")
    assert await detail.locator("#d-by-label").inner_text() == "Submitted by"
    assert await detail.locator("#d-by").inner_text() == "anonymous"
    # Only the commands' events say by whom: the submit and the retry.
    items = detail.locator("#d-timeline li")
    by = [await items.nth(i).locator(".event-actor").all_inner_texts() for i in range(8)]
    assert by == [["by anonymous"], [], [], [], ["by anonymous"], [], [], []]
    assert dash.errors == [] and dash.console == []
