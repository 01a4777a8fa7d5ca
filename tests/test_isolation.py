"""The isolation matrix: two tenants x every route x every role, driven by the app's routes.

Tenant ``acme`` owns a task, a schedule, a webhook and a workflow; ``globex`` calls every
route the app registers (the SSE streams included) with no key and with a key of each
role, with acme's ids in the path:

* a role below the route's (``api.roles.ROUTE_ROLES``) gives 403, no key 401;
* with the role, every read and every write of acme's ids gives 404;
* routes without an id answer globex's own things only: acme's ids and name never show.

Then acme itself gets past each of those 404s, so they are tenancy and not bad ids. A
route added later is covered at once; one whose path has a parameter this file has no id
for, or a write without an id that has no body here, fails with a message naming it.
The timing side of the 404s (another tenant's task vs a missing one) is in
``tests/test_security.py``.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from api import roles
from events import webhooks as wh
from events.log import delete_topics
from events.schedules import schedule_topic
from events.workflows import workflow_topic
from tests.helpers import ARTIFACTS, Env, wait_until
from tests.test_api import cli, problem
from tests.test_roles import app_routes, key

STREAM_READ_S = 0.7  # how long an SSE answer is read before the client hangs up
TASK = {"title": "t", "type": "echo", "payload": {"message": "m"}}
# Bodies of the writes without an id; every other write has an id in its path.
BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/tasks"): TASK,
    ("POST", "/tasks:batch"): {"tasks": [TASK]},
    ("POST", "/schedules"): {"name": "s", "every_s": 3600, "task": TASK},
    ("POST", "/webhooks"): {"url": "http://127.0.0.1:9/hook", "events": ["task.done"]},
    ("POST", "/workflows"): {"name": "w", "tasks": [{"key": "a", **TASK}]},
    ("POST", "/dead-letters:redrive"): {},
}
# Bodies of writes with an id that need one to reach the id check.
ID_BODIES: dict[tuple[str, str], Any] = {
    ("PATCH", "/schedules/{schedule_id}"): {"name": "renamed"},
}
# acme's own request that still answers 404: nothing of acme's has that id.
OWN_404 = {"delivery_id"}
# Public routes that check a credential of their own (the dashboard's login cookie, not
# an API key), so they may answer 401 without it.
SELF_AUTHENTICATED = {("GET", "/session"), ("POST", "/session"), ("DELETE", "/session")}
# Deployment-wide by design (docs/security.md#roles): an admin's view of every tenant.
WIDE = {("GET", "/metrics")}


@pytest.fixture
async def topics(env: Env) -> AsyncIterator[Env]:
    try:
        yield env
    finally:
        env.stop_all()
        await delete_topics(env.bootstrap, [schedule_topic(env.topic), wh.topic_for(env.topic),
                                            workflow_topic(env.topic)])


async def send(c: httpx.AsyncClient, method: str, url: str, headers: dict[str, str],
               body: Any = None) -> tuple[int, str, str]:
    """(status, content type, text); an endless stream is read for ``STREAM_READ_S``."""
    kw: dict[str, Any] = {"json": body} if body is not None else {}
    async with c.stream(method, url, headers=headers, **kw) as r:
        chunks: list[str] = []
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            try:
                async with asyncio.timeout(STREAM_READ_S):
                    async for chunk in r.aiter_text():
                        chunks.append(chunk)
            except TimeoutError:
                pass
        else:
            chunks.append((await r.aread()).decode(errors="replace"))
        return r.status_code, r.headers.get("content-type", ""), "".join(chunks)


async def acme_owns(c: httpx.AsyncClient, h: dict[str, str]) -> dict[str, str]:
    """acme's ids, by path parameter name, each visible to acme."""
    ids = {"delivery_id": str(uuid.uuid4()), "name": "app.js"}
    r = await c.post("/tasks", json=TASK, headers=h)
    ids["task_id"] = r.json()["task_id"]
    r = await c.post("/schedules", json=BODIES[("POST", "/schedules")], headers=h)
    ids["schedule_id"] = r.json()["schedule_id"]
    r = await c.post("/webhooks", json=BODIES[("POST", "/webhooks")], headers=h)
    ids["webhook_id"] = r.json()["webhook_id"]
    r = await c.post("/workflows", json=BODIES[("POST", "/workflows")], headers=h)
    ids["workflow_id"] = r.json()["workflow_id"]
    for name, path in (("task_id", "/tasks"), ("schedule_id", "/schedules"),
                       ("webhook_id", "/webhooks"), ("workflow_id", "/workflows")):

        async def seen(path: str = path, name: str = name) -> bool:
            return (await c.get(f"{path}/{ids[name]}", headers=h)).status_code == 200

        await wait_until(seen, timeout=60, what=f"acme's {name} to be readable")
    return ids


def fill(path: str, ids: dict[str, str]) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        assert name in ids, f"{path}: add an id for {{{name}}} to the isolation matrix"
        return ids[name]

    return re.sub(r"\{(\w+)\}", one, path)


async def test_every_route_keeps_tenants_apart_and_roles_in_their_place(topics: Env) -> None:
    env = topics
    keyfile = ARTIFACTS / env.name / "audit.pem"
    keyfile.parent.mkdir(parents=True, exist_ok=True)
    cli(env, "audit", "keygen", "--out", str(keyfile))
    env.proc("projector")
    env.proc("scheduler")
    env.proc("coordinator")
    await env.api(TASKFLOW_AUTH="true", TASKFLOW_READ_WAIT_S="0.2",
                  TASKFLOW_OUTBOUND_ALLOW="127.0.0.1",
                  TASKFLOW_AUDIT_SIGNING_KEY=str(keyfile))
    acme = {role: key(env, "acme", role) for role in roles.ROLES}
    globex: dict[str | None, dict[str, str]] = {
        None: {}, **{role: key(env, "globex", role) for role in roles.ROLES}}
    routes = sorted(app_routes())
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        ids = await acme_owns(c, acme["admin"])
        secret = [v for k, v in ids.items() if k not in OWN_404] + ["acme"]
        seen_404: list[tuple[str, str]] = []
        for method, path in routes:
            needed = roles.ROUTE_ROLES[(method, path)]
            url = fill(path, ids)
            has_id = url != path
            body = ID_BODIES.get((method, path)) if has_id else BODIES.get((method, path))
            if needed == roles.PUBLIC:
                # No key needed; a public write (a login) may still refuse its body.
                status, _, text = await send(c, method, url, {}, body)
                assert status < 500, (method, path, status, text)
                if method == "GET" and (method, path) not in SELF_AUTHENTICATED:
                    assert status not in (401, 403), (path, status, text)
                continue
            if method != "GET" and not has_id:
                assert (method, path) in BODIES, f"{method} {path}: add a body to BODIES"
            for role, h in globex.items():
                where = f"{method} {path} as globex {role or 'without a key'}"
                # Replays every change an SSE stream may show, not only new ones.
                status, ctype, text = await send(c, method, url,
                                                 {**h, "Last-Event-ID": "0"}, body)
                if role is None:
                    assert status == 401 and "problem+json" in ctype, (where, status, text)
                elif not roles.allows(role, needed):
                    assert status == 403 and "problem+json" in ctype, (where, status, text)
                    assert f"needs the role {needed}" in text, where
                elif has_id:
                    assert status == 404 and "problem+json" in ctype, (where, status, text)
                    seen_404.append((method, path))
                else:
                    assert 200 <= status < 300, (where, status, text)
                    if (method, path) not in WIDE:
                        leaked = [s for s in secret if s in text]
                        assert not leaked, (where, leaked, text[:2000])
        # acme gets past every one of those 404s: reads first, then writes, deletes last.
        order = sorted(set(seen_404), key=lambda mp: (mp[0] != "GET", mp[0] == "DELETE"))
        for method, path in order:
            if any(f"{{{n}}}" in path for n in OWN_404):
                continue
            status, _, text = await send(c, method, fill(path, ids),
                                         {**acme["admin"], "Last-Event-ID": "0"},
                                         ID_BODIES.get((method, path)))
            assert status != 404 and status < 500, (method, path, status, text)
    # Everything that needs a role was asked with an id, so the matrix is not empty.
    with_id = {(m, p) for m, p in routes if "{" in p and roles.ROUTE_ROLES[(m, p)] != "public"}
    assert set(seen_404) == with_id


async def test_a_missing_role_is_403_before_the_tenant_is_looked_at(env: Env) -> None:
    """A reader asking to cancel another tenant's task learns only that it may not."""
    await env.api(TASKFLOW_AUTH="true")
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        theirs = (await c.post("/tasks", json=TASK, headers=key(env, "acme"))).json()
        for tid in (theirs["task_id"], str(uuid.uuid4())):
            doc = problem(await c.post(f"/tasks/{tid}/cancel",
                                       headers=key(env, "globex", "reader")), 403)
            assert tid not in doc["detail"] and doc["instance"].endswith("/cancel")
