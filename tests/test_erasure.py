"""Erasure by crypto-shredding: sealed payloads and results, then erased everywhere.

Every read path is checked after the key is deleted: GET, the list, the history, replay,
SSE and a rebuild; verify still finds 0 differences and the hash chain still holds."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import uuid
from typing import Any

import httpx
import orjson

from tests.helpers import ROOT, Env, SSEReader, free_port, wait_until

ERASED = {"$erased": True}
SECRET = "card 4111-1111"  # must never be readable after the erasure


def cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([sys.executable, "-m", "cli.main", *args], cwd=ROOT,
                         env={**os.environ, **env.vars}, capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


async def _done(c: httpx.AsyncClient, tid: str) -> bool:
    r = await c.get(f"/tasks/{tid}/events")
    return r.status_code == 200 and bool(r.json()["items"]) and (
        r.json()["items"][-1]["type"] == "task.done")


async def _erased_in_journal(c: httpx.AsyncClient, tid: str) -> bool:
    r = await c.get(f"/tasks/{tid}/events")
    return any(e["type"] == "task.erased" for e in r.json()["items"])


def _data(items: list[dict[str, Any]], etype: str) -> dict[str, Any]:
    return next(e["data"] for e in items if e["type"] == etype)


async def test_erasure_reaches_every_read_path_and_keeps_the_metadata(env: Env) -> None:
    env.extra.update({"TASKFLOW_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
                      "TASKFLOW_AUDIT_CHAIN": "1"})
    env.proc("projector")
    env.proc("worker")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c, \
            SSEReader(f"{env.base_url}/events") as sse:
        r = await c.post("/tasks", json={"title": "charge", "payload": {"message": SECRET}})
        tid = r.json()["task_id"]
        kept = (await c.post("/tasks", json={"title": "other",
                                             "payload": {"message": "kept"}})).json()["task_id"]
        await wait_until(lambda: _done(c, tid), what="task.done")
        await wait_until(lambda: _done(c, kept), what="the other task.done")

        # Sealed in the log and the read model, plain to readers while the key exists.
        log = b"".join(r.value or b"" for r in await env.read_log())
        assert SECRET.encode() not in log and b'"$enc"' in log
        conn = await env.db()
        try:
            stored = await conn.fetchval("SELECT payload::text FROM tasks WHERE task_id = $1",
                                         uuid.UUID(tid))
        finally:
            await conn.close()
        assert SECRET not in stored
        before = (await c.get(f"/tasks/{tid}")).json()
        assert before["payload"] == {"message": SECRET} and before["result"] == SECRET
        snap = await _snapshot(c, tid)
        assert snap["payload"] == {"message": SECRET} and snap["result"] == SECRET

        # A keyed submit retried on another API process compares with the sealed row.
        keyed = {"title": "keyed", "payload": {"message": "k"}}
        h = {"Idempotency-Key": "pay-1"}
        first = await c.post("/tasks", json=keyed, headers=h)
        await wait_until(lambda: _done(c, first.json()["task_id"]), what="keyed task done")
        other = free_port()
        await env.api(port=other)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{other}", timeout=30) as c2:
            again = await c2.post("/tasks", json=keyed, headers=h)
            assert again.status_code == 200, again.text
            assert again.json()["task_id"] == first.json()["task_id"]
            clash = await c2.post("/tasks", json={**keyed, "payload": {"message": "x"}},
                                  headers=h)
            assert clash.status_code == 422

        r = await c.delete(f"/tasks/{tid}/data")
        assert r.status_code == 202, r.text
        await wait_until(lambda: _erased_in_journal(c, tid), what="task.erased projected")

        after = (await c.get(f"/tasks/{tid}")).json()
        assert after["payload"] == ERASED and after["result"] == ERASED
        snap = await _snapshot(c, tid)
        assert snap["payload"] == ERASED and snap["result"] == ERASED
        for f in ("status", "type", "title", "attempt", "created_at", "finished_at"):
            assert after[f] == before[f]
        listed = {t["task_id"]: t for t in (await c.get("/tasks")).json()["items"]}
        assert listed[tid]["payload"] == ERASED
        assert listed[kept]["payload"] == {"message": "kept"}  # only that task's key went
        items = (await c.get(f"/tasks/{tid}/events")).json()["items"]
        assert _data(items, "task.created")["payload"] == ERASED
        assert _data(items, "task.done")["result"] == ERASED
        assert _data(items, "task.erased")["actor"] == "api"
        await asyncio.sleep(0.5)
    frames = [e for e in sse.events if "data" in e]
    assert frames and all(SECRET not in e["data"] for e in frames)
    assert any(orjson.loads(e["data"])["task_id"] == tid and e["event"] == "task.done"
               for e in frames)

    replayed = [orjson.loads(line) for line in
                cli(env, "replay", "--task", tid).stdout.splitlines()]
    assert replayed[0]["data"]["payload"] == ERASED
    assert _data(replayed, "task.erased")["actor"] == "api"
    assert SECRET not in str(replayed)
    assert "0 difference(s)" in cli(env, "projections", "verify").stderr
    cli(env, "projections", "rebuild")
    assert "0 difference(s)" in cli(env, "projections", "verify").stderr
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        rebuilt = (await c.get(f"/tasks/{tid}")).json()
        assert rebuilt["payload"] == ERASED and rebuilt["status"] == "DONE"
        assert (await c.get(f"/tasks/{kept}")).json()["result"] == "kept"
    # The chain covers the ciphertext: the erasure leaves it intact.
    audit = cli(env, "audit", "verify")
    assert "0 break(s)" in audit.stderr

    # The command line, by task: the same, with its own actor.
    cli(env, "erase", "--task", kept, "--actor", "dpo@example.com")
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        await wait_until(lambda: _erased_in_journal(c, kept), what="second task.erased")
        gone = (await c.get(f"/tasks/{kept}")).json()
        assert gone["payload"] == ERASED and gone["result"] == ERASED
        items = (await c.get(f"/tasks/{kept}/events")).json()["items"]
        assert _data(items, "task.erased")["actor"] == "dpo@example.com"


async def test_erase_a_tenant_leaves_other_tenants_readable(env: Env) -> None:
    env.extra.update({"TASKFLOW_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
                      "TASKFLOW_AUTH": "1"})
    acme_key = cli(env, "keys", "create", "--tenant", "acme", "--role", "admin").stdout.strip()
    acme = {"Authorization": f"Bearer {acme_key}"}
    globex = {"X-API-Key": cli(env, "keys", "create", "--tenant", "globex", "--role",
                               "admin").stdout.strip()}
    env.proc("projector")
    env.proc("worker")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        ids = {}
        for name, h in (("acme", acme), ("globex", globex)):
            r = await c.post("/tasks", json={"title": name, "payload": {"message": name}},
                             headers=h)
            assert r.status_code == 202, r.text
            ids[name] = r.json()["task_id"]

        async def both_done() -> bool:
            for name, h in (("acme", acme), ("globex", globex)):
                r = await c.get(f"/tasks/{ids[name]}", headers=h)
                if r.status_code != 200 or r.json()["status"] != "DONE":
                    return False
            return True

        await wait_until(both_done, what="both tasks done")
        assert "erased 1 task(s)" in cli(env, "erase", "--tenant", "acme").stderr

        async def acme_erased() -> bool:
            r = await c.get(f"/tasks/{ids['acme']}/events", headers=acme)
            return any(e["type"] == "task.erased" for e in r.json()["items"])

        await wait_until(acme_erased, what="task.erased of acme's task")
        gone = (await c.get(f"/tasks/{ids['acme']}", headers=acme)).json()
        assert gone["payload"] == ERASED and gone["result"] == ERASED
        assert gone["status"] == "DONE"
        kept = (await c.get(f"/tasks/{ids['globex']}", headers=globex)).json()
        assert kept["payload"] == {"message": "globex"} and kept["result"] == "globex"
        # The tenant's own API key erases its own task the same way, with its actor.
        r = await c.delete(f"/tasks/{ids['globex']}/data", headers=acme)
        assert r.status_code == 404  # not acme's task
        r = await c.delete(f"/tasks/{ids['globex']}/data", headers=globex)
        assert r.status_code == 202


async def test_concurrent_key_requests_share_inserts_and_get_their_own_keys(env: Env) -> None:
    from events import crypto, keystore
    from events.db import make_engine

    engine = make_engine(env.database_url, pool_size=1)
    ring = keystore.Keyring(os.urandom(32), engine)
    try:
        ids = [uuid.uuid4() for _ in range(50)]
        got = await asyncio.gather(*(ring.create({t: "acme"}) for t in ids))
        assert [list(g) for g in got] == [[t] for t in ids]
        keys = {t: g[t] for t, g in zip(ids, got, strict=True)}
        assert len(set(keys.values())) == 50
        again = await ring.create({ids[0]: "acme"})  # the same task keeps its key
        assert again == {ids[0]: keys[ids[0]]}
        assert await ring.keys(ids) == keys
        sealed = crypto.seal_value(keys[ids[1]], ids[1], "payload", {"a": 1})
        assert crypto.open_value(keys[ids[1]], ids[1], "payload", sealed) == {"a": 1}
        assert sorted(await keystore.erase(engine, tenant="acme"), key=str) == sorted(ids, key=str)
        assert await ring.keys(ids) == {}
    finally:
        await engine.dispose()


async def _snapshot(c: httpx.AsyncClient, tid: str) -> dict[str, Any]:
    """The ``snapshot`` event of a finished task's stream (which then ends)."""
    r = await c.get(f"/tasks/{tid}/stream")
    assert r.status_code == 200, r.text
    frame = r.text.split("\n\n")[0].splitlines()
    assert "event: snapshot" in frame, frame
    doc: dict[str, Any] = orjson.loads(next(x[6:] for x in frame if x.startswith("data: ")))
    return doc
