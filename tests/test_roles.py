"""Roles of API keys: admin > submitter > reader, one table of what each route needs.

* a reader cannot submit (403, on the fast path and the routed one), a submitter can;
* a submitter cannot redrive dead letters, an admin can, only its own tenant's;
* ``/metrics`` needs an admin key; ``/stats`` is the caller's, internals for admins only;
* ``taskflow keys create --role``; new keys are submitters, keys from before roles admins;
* every registered route has a row in ``ROUTE_ROLES``, and docs/security.md shows it.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid

import asyncpg
import httpx
import orjson
from fastapi.routing import iter_route_contexts

from api import roles
from api.app import create_app
from api.auth import authenticate
from events.db import alembic_config, asyncpg_dsn
from tests.helpers import ROOT, Env, wait_until
from tests.test_api import cli, problem


def key(env: Env, tenant: str, role: str | None = None) -> dict[str, str]:
    args = ["keys", "create", "--tenant", tenant, *(["--role", role] if role else [])]
    return {"Authorization": f"Bearer {cli(env, *args)}"}


def _cli_run(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT,
                          env={**os.environ, **env.vars}, capture_output=True, text=True,
                          timeout=60, check=False)


def app_routes() -> set[tuple[str, str]]:
    """(method, path template) of every route the app registers (HEAD as GET)."""
    out = set()
    for r in iter_route_contexts(create_app().routes):
        for m in r.methods or ():
            if m != "HEAD" and r.path is not None:
                out.add((m, r.path))
    return out


def test_every_route_states_its_role() -> None:
    routes = app_routes()
    missing = routes - set(roles.ROUTE_ROLES)
    assert not missing, f"routes with no ROUTE_ROLES row: {sorted(missing)}"
    stale = set(roles.ROUTE_ROLES) - routes
    assert not stale, f"ROUTE_ROLES rows for no route: {sorted(stale)}"
    assert set(roles.ROUTE_ROLES.values()) <= {roles.PUBLIC, *roles.ROLES}


def _dependencies(dependant: object) -> list[object]:
    out = []
    for d in getattr(dependant, "dependencies", ()):
        out += [d.call, *_dependencies(d)]
    return out


def test_every_route_that_needs_a_role_authenticates() -> None:
    """A role is checked in ``authenticate``; a route that never calls it would be open."""
    wrong = []
    for r in iter_route_contexts(create_app().routes):
        for m in (r.methods or set()) - {"HEAD"}:
            needs = roles.ROUTE_ROLES[(m, r.path or "")]
            calls = authenticate in _dependencies(getattr(r, "dependant", None))
            if calls != (needs != roles.PUBLIC):
                wrong.append((m, r.path, needs))
    assert not wrong


def test_docs_security_lists_every_route_with_its_role() -> None:
    text = (ROOT / "docs" / "security.md").read_text()
    rows = re.findall(r"^\| `(GET|POST|PATCH|DELETE|PUT) (\S+)` \| (\w+) \|", text, re.M)
    assert {(m, p): r for m, p, r in rows} == roles.ROUTE_ROLES
    assert len(rows) == len(roles.ROUTE_ROLES)


def test_roles_are_ordered() -> None:
    assert roles.allows("admin", "submitter") and roles.allows("submitter", "reader")
    assert not roles.allows("reader", "submitter") and not roles.allows("submitter", "admin")
    assert roles.allows("reader", roles.PUBLIC) and not roles.allows("nobody", "reader")
    assert roles.required("GET", "/a/route/nobody/made") == "admin"  # closed by default


async def test_a_reader_cannot_submit_and_a_submitter_can(env: Env) -> None:
    await env.api(TASKFLOW_AUTH="true")
    reader, submitter = key(env, "acme", "reader"), key(env, "acme", "submitter")
    body = {"title": "t", "payload": {"message": "m"}}
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        # Without and with an Idempotency-Key: the fast path and FastAPI's route.
        for extra in ({}, {"Idempotency-Key": str(uuid.uuid4())}):
            doc = problem(await c.post("/tasks", json=body, headers={**reader, **extra}), 403)
            assert doc["required_role"] == "submitter" and doc["role"] == "reader"
            assert "POST /tasks needs the role submitter" in doc["detail"]
            r = await c.post("/tasks", json=body, headers={**submitter, **extra})
            assert r.status_code == 202, r.text
        problem(await c.post("/tasks:batch", json={"tasks": [body]}, headers=reader), 403)
        assert (await c.get("/tasks", headers=reader)).status_code == 200
    assert len(await env.log_events()) == 2  # the refused submits appended nothing


async def test_only_an_admin_redrives_dead_letters_and_only_its_own(env: Env) -> None:
    env.proc("projector")
    env.proc("worker")
    await env.api(TASKFLOW_AUTH="true")
    acme, acme_admin = key(env, "acme"), key(env, "acme", "admin")
    globex = key(env, "globex")
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        dead = {}
        for name, h in (("acme", acme), ("globex", globex)):
            r = await c.post("/tasks", headers=h,
                             json={"title": name, "type": "fail", "max_attempts": 1})
            dead[name] = r.json()["task_id"]

        async def both_dead() -> bool:
            a = (await c.get("/dead-letters", headers=acme)).json()["items"]
            g = (await c.get("/dead-letters", headers=globex)).json()["items"]
            return len(a) == 1 and len(g) == 1

        await wait_until(both_dead, timeout=60, what="both tasks to be dead-lettered")
        listed = (await c.get("/dead-letters", headers=acme)).json()["items"]
        assert [i["task_id"] for i in listed] == [dead["acme"]]
        doc = problem(await c.post("/dead-letters:redrive", headers=acme), 403)
        assert doc["required_role"] == "admin" and doc["role"] == "submitter"
        r = await c.post("/dead-letters:redrive", headers=acme_admin, json={"type": "fail"})
        assert r.status_code == 202, r.text
        assert r.json() == {"redriven": 1, "task_ids": [dead["acme"]]}

        async def redriven(tid: str, h: dict[str, str]) -> list[str]:
            items = (await c.get(f"/tasks/{tid}/events", headers=h)).json()["items"]
            return [e["type"] for e in items]

        async def acme_redriven() -> bool:
            return "task.redriven" in await redriven(dead["acme"], acme)

        await wait_until(acme_redriven, timeout=60, what="acme's task to be redriven")
        assert "task.redriven" not in await redriven(dead["globex"], globex)
        # The redrive records the admin key that asked for it as its actor.
        items = (await c.get(f"/tasks/{dead['acme']}/events", headers=acme)).json()["items"]
        admin_id = acme_admin["Authorization"].removeprefix("Bearer tfk_").partition("_")[0]
        assert [e["actor"] for e in items if e["type"] == "task.redriven"] == [admin_id]


async def test_metrics_need_an_admin_key(env: Env) -> None:
    await env.api(TASKFLOW_AUTH="true")
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        problem(await c.get("/metrics"), 401)
        for role in ("reader", "submitter"):
            problem(await c.get("/metrics", headers=key(env, "acme", role)), 403)
        r = await c.get("/metrics", headers=key(env, "acme", "admin"))
        assert r.status_code == 200 and "taskflow_" in r.text


async def test_stats_are_the_callers_and_internals_are_for_admins(env: Env) -> None:
    env.proc("projector")
    await env.api(TASKFLOW_AUTH="true")
    acme, globex = key(env, "acme", "reader"), key(env, "globex")
    admin = key(env, "globex", "admin")
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        for i in range(3):
            r = await c.post("/tasks", headers=globex, json={"title": f"g{i}"})
            assert r.status_code == 202

        async def counted() -> bool:
            stats = (await c.get("/stats", headers=globex)).json()
            return bool(sum(stats["counts"].values()) == 3)

        await wait_until(counted, timeout=30, what="globex's tasks in /stats")
        mine = (await c.get("/stats", headers=acme)).json()
        assert mine["counts"] == {} and mine["open"]["by_tenant"] == {}
        assert "lag" not in mine and "retention" not in mine
        full = (await c.get("/stats", headers=admin)).json()
        assert full["counts"] == {"PENDING": 3} and "lag" in full and "retention" in full


async def test_keys_have_a_role_new_ones_submit_old_ones_stay_admin(env: Env) -> None:
    from alembic import command

    cfg = alembic_config(env.database_url)
    await asyncio.to_thread(command.downgrade, cfg, "0014")  # type: ignore[arg-type]
    conn = await asyncpg.connect(asyncpg_dsn(env.database_url))
    try:
        await conn.execute("INSERT INTO api_keys (key_id, tenant, secret_hash) "
                           "VALUES ('old', 'acme', 'x')")
        await asyncio.to_thread(command.upgrade, cfg, "head")  # type: ignore[arg-type]
    finally:
        await conn.close()
    cli(env, "keys", "create", "--tenant", "acme")
    cli(env, "keys", "create", "--tenant", "acme", "--role", "reader")
    listed = [orjson.loads(line) for line in cli(env, "keys", "list").splitlines()]
    assert [(k["tenant"], k["role"]) for k in listed] == [
        ("acme", "admin"), ("acme", "submitter"), ("acme", "reader")]
    assert listed[0]["key_id"] == "old"
    res = _cli_run(env, "keys", "create", "--tenant", "acme", "--role", "root")
    assert res.returncode != 0 and "role must be one of" in res.stderr
    assert len(cli(env, "keys", "list").splitlines()) == 3
