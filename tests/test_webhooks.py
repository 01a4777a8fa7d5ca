"""Webhook subscriptions: the API, their events in the log, the projection, verify/rebuild."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from events import webhooks as wh
from events.log import delete_topics
from events.settings import Settings
from projector import webhooks as hooks_projection
from tests.helpers import ROOT, Env, wait_until

ALLOW = {"TASKFLOW_OUTBOUND_ALLOW": "127.0.0.1"}


@pytest.fixture
async def hooks_env(env: Env) -> AsyncIterator[Env]:
    """``env`` with its webhook topic removed afterwards as well."""
    yield env
    await delete_topics(env.bootstrap, [wh.topic_for(env.topic)])


def settings_of(env: Env) -> Settings:
    return Settings(database_url=env.database_url, topic=env.topic,
                    kafka_bootstrap=env.bootstrap)


def cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT,
                          env={**os.environ, **env.vars}, capture_output=True, text=True,
                          timeout=120, check=False)


async def hook_events(env: Env) -> list[wh.HookEvent]:
    return [wh.decode_hook(r.value) for r in await env.read_log(wh.topic_for(env.topic))]


def problem(resp: httpx.Response, status: int) -> dict[str, object]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = resp.json()
    return body


async def start(env: Env, auth: bool = False) -> None:
    env.extra.update(ALLOW)
    env.proc("projector")
    if auth:
        await env.api(None, TASKFLOW_AUTH="true")
    else:
        await env.api()


async def test_subscription_lifecycle_is_events_in_the_log(hooks_env: Env) -> None:
    env = hooks_env
    await start(env)
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        before = datetime.now(UTC).isoformat()
        r = await c.post("/webhooks", json={"url": "http://127.0.0.1:9/hook",
                                            "events": ["task.done", "task.dead_lettered"],
                                            "description": "ops"})
        assert r.status_code == 201, r.text
        created = r.json()
        hid, secret = created["webhook_id"], created["secret"]
        assert secret.startswith("whsec_")
        assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
        got = (await c.get(f"/webhooks/{hid}")).json()
        assert got["url"] == "http://127.0.0.1:9/hook"
        assert got["events"] == ["task.done", "task.dead_lettered"]
        assert "secret" not in got  # shown once, at creation
        listed = (await c.get("/webhooks")).json()["items"]
        assert [h["webhook_id"] for h in listed] == [hid]
        rotated = await c.post(f"/webhooks/{hid}:rotate-secret")
        assert rotated.status_code == 200, rotated.text
        new_secret = rotated.json()["secret"]
        assert new_secret.startswith("whsec_") and new_secret != secret
        conn = await env.db()
        try:
            assert await conn.fetchval("SELECT secret FROM webhooks WHERE webhook_id = $1",
                                       uuid.UUID(hid)) == new_secret
        finally:
            await conn.close()
        alive = datetime.now(UTC).isoformat()
        assert (await c.delete(f"/webhooks/{hid}")).status_code == 204
        problem(await c.get(f"/webhooks/{hid}"), 404)
        # ?as_of= folds the webhook's journal up to a time or a position.
        then = await c.get(f"/webhooks/{hid}", params={"as_of": alive})
        assert then.status_code == 200, then.text
        assert then.json()["url"] == "http://127.0.0.1:9/hook" and "secret" not in then.json()
        problem(await c.get(f"/webhooks/{hid}", params={"as_of": before}), 404)
        problem(await c.get(f"/webhooks/{hid}",
                            params={"as_of": datetime.now(UTC).isoformat()}), 404)
        problem(await c.get(f"/webhooks/{hid}", params={"as_of": "soon"}), 422)
        assert (await c.get("/webhooks")).json()["items"] == []
        problem(await c.delete(f"/webhooks/{hid}"), 404)
        problem(await c.post(f"/webhooks/{uuid.uuid4()}:rotate-secret"), 404)
    evs = await hook_events(env)
    assert [e.type for e in evs] == [wh.HookType.CREATED, wh.HookType.SECRET_ROTATED,
                                     wh.HookType.DELETED]
    assert {str(e.subject) for e in evs} == {hid}
    assert evs[0].data["secret"] == secret and evs[1].data["secret"] == new_secret


async def test_invalid_subscriptions_are_422_problems(hooks_env: Env) -> None:
    env = hooks_env
    await start(env)
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        ok = {"url": "http://127.0.0.1:9/", "events": ["task.done"]}
        for bad in ({**ok, "events": ["task.nope"]}, {**ok, "events": []},
                    {**ok, "url": "ftp://127.0.0.1/x"}, {**ok, "url": "not a url"},
                    {**ok, "url": "http://user:pw@127.0.0.1/"}, {"url": ok["url"]},
                    {**ok, "extra": 1}, {**ok, "url": "x" * 5000}):
            problem(await c.post("/webhooks", json=bad), 422)
        problem(await c.get("/webhooks/not-a-uuid"), 422)
    assert await hook_events(env) == []


async def test_webhooks_are_tenant_scoped(hooks_env: Env) -> None:
    env = hooks_env
    await start(env, auth=True)
    keys = []
    for tenant in ("acme", "globex"):
        res = cli(env, "keys", "create", "--tenant", tenant)
        assert res.returncode == 0, res.stderr
        keys.append({"Authorization": f"Bearer {res.stdout.strip()}"})
    a, b = keys
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        problem(await c.get("/webhooks"), 401)
        r = await c.post("/webhooks", headers=a, json={"url": "http://127.0.0.1:9/",
                                                       "events": ["task.done"]})
        assert r.status_code == 201, r.text
        hid = r.json()["webhook_id"]
        assert [h["webhook_id"] for h in (await c.get("/webhooks", headers=a)).json()["items"]
                ] == [hid]
        assert (await c.get("/webhooks", headers=b)).json()["items"] == []
        problem(await c.get(f"/webhooks/{hid}", headers=b), 404)
        problem(await c.delete(f"/webhooks/{hid}", headers=b), 404)
        problem(await c.get(f"/webhooks/{hid}/deliveries", headers=b), 404)
        assert (await c.get(f"/webhooks/{hid}", headers=a)).json()["tenant"] == "acme"


async def test_verify_and_rebuild_cover_the_webhook_tables(hooks_env: Env) -> None:
    env = hooks_env
    await start(env)
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        ids = []
        for i in range(3):
            r = await c.post("/webhooks", json={"url": f"http://127.0.0.1:9/{i}",
                                                "events": ["task.done"]})
            assert r.status_code == 201
            ids.append(r.json()["webhook_id"])
        await c.post(f"/webhooks/{ids[0]}:rotate-secret")
        await c.delete(f"/webhooks/{ids[1]}")
    s = settings_of(env)
    conn = await env.db()
    try:
        async def projected() -> bool:
            return bool(await conn.fetchval("SELECT count(*) FROM webhooks WHERE deleted") == 1)

        await wait_until(projected, what="the delete to be projected")
        assert await hooks_projection.verify(s) == []
        # The journal ?as_of= folds is checked too: a row lost or changed is reported.
        gone, changed = await conn.fetch(
            'SELECT partition, "offset" FROM webhook_events ORDER BY time LIMIT 2')
        await conn.execute('DELETE FROM webhook_events WHERE partition = $1 AND "offset" = $2',
                           gone["partition"], gone["offset"])
        await conn.execute("UPDATE webhook_events SET type = 'webhook.deleted' "
                           'WHERE partition = $1 AND "offset" = $2',
                           changed["partition"], changed["offset"])
        diffs = await hooks_projection.verify(s)
        assert sorted(diffs) == sorted([
            f"journal {gone['partition']}:{gone['offset']}: read model=absent log=present",
            f"journal {changed['partition']}:{changed['offset']} type: "
            "read model='webhook.deleted' log='webhook.created'"]), diffs
        # A read model that drifted from the log is reported, and a rebuild repairs it.
        await conn.execute("UPDATE webhooks SET url = 'http://tampered/' WHERE webhook_id = $1",
                           uuid.UUID(ids[2]))
        await conn.execute("DELETE FROM webhooks WHERE webhook_id = $1", uuid.UUID(ids[0]))
        diffs = await hooks_projection.verify(s)
        assert any(ids[2] in d and "url" in d for d in diffs), diffs
        assert any(ids[0] in d and "absent" in d for d in diffs), diffs
        res = cli(env, "projections", "verify")
        assert res.returncode == 1 and ids[2] in res.stdout
        res = cli(env, "projections", "rebuild")
        assert res.returncode == 0, res.stderr
        assert await hooks_projection.verify(s) == []
        assert await conn.fetchval("SELECT url FROM webhooks WHERE webhook_id = $1",
                                   uuid.UUID(ids[2])) == "http://127.0.0.1:9/2"
        assert cli(env, "projections", "verify").returncode == 0
    finally:
        await conn.close()
