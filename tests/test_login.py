"""Dashboard login over real HTTP: ``POST /session`` and the ``taskflow_session`` cookie.

* the cookie is HttpOnly and SameSite=Strict; Secure only over https (a trusted proxy's
  ``X-Forwarded-Proto`` included); Postgres holds only its SHA-256;
* it reads, streams (SSE) and writes as its key's tenant; a write needs ``X-CSRF-Token``
  and no foreign ``Origin``/``Referer``, which API-key requests never need;
* logging out, expiry and revoking the key each end it at once.
"""

from __future__ import annotations

import asyncio
import hashlib
from http.cookies import SimpleCookie
from typing import Any

import httpx

from events.constants import LOGIN_COOKIE
from tests.helpers import Env, SSEReader, free_port, wait_until
from tests.test_api import cli, problem

# uvicorn believes X-Forwarded-Proto only from FORWARDED_ALLOW_IPS (127.0.0.1 by default):
# a proxy elsewhere, so that only TASKFLOW_TRUST_FORWARDED_PROTO can make it count.
PROXY_ELSEWHERE = "192.0.2.1"


def _set_cookie(r: httpx.Response) -> tuple[str, set[str], dict[str, str]]:
    """The login cookie ``r`` sets: its value, its flags and its other attributes."""
    raw = [v for v in r.headers.get_list("set-cookie") if v.startswith(LOGIN_COOKIE + "=")]
    assert len(raw) == 1, r.headers
    parts = [p.strip() for p in raw[0].split(";")]
    value = parts[0].partition("=")[2]
    flags = {p.lower() for p in parts[1:] if "=" not in p}
    attrs = {k.strip().lower(): v for k, _, v in (p.partition("=") for p in parts[1:] if "=" in p)}
    assert SimpleCookie(raw[0])[LOGIN_COOKIE].value == value
    return value, flags, attrs


async def _login(c: httpx.AsyncClient, key: str, **headers: str) -> tuple[str, dict[str, Any]]:
    """(cookie value, body) of a login. The client's own jar is emptied: every request
    below names the cookie it sends, so that the server alone decides what still counts."""
    r = await c.post("/session", json={"key": key}, headers=headers)
    assert r.status_code == 200, r.text
    c.cookies.clear()
    return _set_cookie(r)[0], r.json()


def _cookie(value: str, **more: str) -> dict[str, str]:
    return {"Cookie": f"{LOGIN_COOKIE}={value}", **more}


async def test_the_cookie_is_httponly_strict_and_secure_only_over_https(env: Env) -> None:
    await env.api(TASKFLOW_AUTH="true", FORWARDED_ALLOW_IPS=PROXY_ELSEWHERE)
    trusting = free_port()
    await env.api(port=trusting, TASKFLOW_AUTH="true", FORWARDED_ALLOW_IPS=PROXY_ELSEWHERE,
                  TASKFLOW_TRUST_FORWARDED_PROTO="true")
    key = cli(env, "keys", "create", "--tenant", "acme")
    key_id = key[4:].partition("_")[0]
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        r = await c.post("/session", json={"key": key})
        assert r.status_code == 200, r.text
        value, flags, attrs = _set_cookie(r)
        assert {"httponly"} <= flags and "secure" not in flags, (flags, attrs)
        assert attrs["samesite"].lower() == "strict" and attrs["path"] == "/"
        assert int(attrs["max-age"]) == 8 * 3600  # TASKFLOW_SESSION_TTL_S's default
        body = r.json()
        assert (body["tenant"], body["key_id"]) == ("acme", key_id)
        assert body["csrf_token"] and body["csrf_token"] not in (value, key)
        assert "no-store" in r.headers["cache-control"]
        # Postgres holds the SHA-256 of the token, never the token.
        conn = await env.db()
        try:
            rows = await conn.fetch("SELECT token_hash, key_id, tenant, expires_at - created_at"
                                    " AS ttl FROM api_sessions")
        finally:
            await conn.close()
        assert [(x["token_hash"], x["key_id"], x["tenant"]) for x in rows] == [
            (hashlib.sha256(value.encode()).hexdigest(), key_id, "acme")]
        assert rows[0]["ttl"].total_seconds() == 8 * 3600
        # X-Forwarded-Proto from an address nobody vouches for: still not Secure.
        r = await c.post("/session", json={"key": key}, headers={"X-Forwarded-Proto": "https"})
        assert "secure" not in _set_cookie(r)[1]
        # A bad key is a 401 problem, and a body without a key a 422.
        problem(await c.post("/session", json={"key": f"tfk_{key_id}_wrong"}), 401)
        problem(await c.post("/session", json={"key": "not-a-key"}), 401)
        problem(await c.post("/session", json={}), 422)
        problem(await c.post("/session", json={"key": key, "tenant": "other"}), 422)
        # Another site's page cannot log the browser in (as the attacker).
        problem(await c.post("/session", json={"key": key},
                             headers={"Origin": "https://evil.example"}), 403)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{trusting}", timeout=30) as c:
        r = await c.post("/session", json={"key": key}, headers={"X-Forwarded-Proto": "https"})
        assert r.status_code == 200, r.text
        _, flags, attrs = _set_cookie(r)
        assert {"secure", "httponly"} <= flags and attrs["samesite"].lower() == "strict"
        r = await c.post("/session", json={"key": key})  # plain http to the same process
        assert "secure" not in _set_cookie(r)[1]


async def test_the_cookie_reads_streams_and_writes_as_its_key_with_a_csrf_token(
        env: Env) -> None:
    env.proc("projector")
    await env.api(TASKFLOW_AUTH="true")
    key_a = cli(env, "keys", "create", "--tenant", "acme")
    key_b = cli(env, "keys", "create", "--tenant", "globex")
    a, b = ({"Authorization": f"Bearer {k}"} for k in (key_a, key_b))
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        problem(await c.get("/tasks"), 401)
        theirs = (await c.post("/tasks", json={"title": "globex only"}, headers=b)).json()
        ours = (await c.post("/tasks", json={"title": "acme's",
                                             "payload": {"message": "hi"}}, headers=a)).json()
        value, me = await _login(c, key_a)
        jar = _cookie(value)
        who = await c.get("/session", headers=jar)
        assert who.status_code == 200, who.text
        assert who.json() == me and me["tenant"] == "acme"
        problem(await c.get("/session"), 401)

        async def listed() -> set[str] | None:
            r = await c.get("/tasks", headers=jar)
            assert r.status_code == 200, r.text
            ids = {t["task_id"] for t in r.json()["items"]}
            return ids if ours["task_id"] in ids else None

        ids = await wait_until(listed, timeout=30, what="acme's task listed with the cookie")
        assert ids is not None and theirs["task_id"] not in ids
        problem(await c.get(f"/tasks/{theirs['task_id']}", headers=jar), 404)

        # SSE with the cookie alone, as EventSource sends it: both streams.
        url = f"{env.base_url}/events?after=0"
        async with SSEReader(url, headers=jar) as sse:
            assert sse.status == 200

            async def seen() -> bool:
                return any(ours["task_id"] in e.get("data", "") for e in sse.events)

            await wait_until(seen, timeout=30, what="acme's change on the cookie's stream")
            assert not any(theirs["task_id"] in e.get("data", "") for e in sse.events)
        async with SSEReader(f"{env.base_url}/tasks/{ours['task_id']}/stream",
                             headers=jar) as one:
            assert one.status == 200

            async def snapshot() -> bool:
                return any(e.get("event") == "snapshot" for e in one.events)

            await wait_until(snapshot, timeout=30, what="the task's snapshot")
        async with SSEReader(url) as none:
            assert none.status == 401

        # Writes: the CSRF token is required, and so is this origin.
        spec = {"title": "from the dashboard"}
        csrf = {"X-CSRF-Token": me["csrf_token"]}
        doc = problem(await c.post("/tasks", json=spec, headers=jar), 403)
        assert "X-CSRF-Token" in doc["detail"]
        problem(await c.post("/tasks", json=spec, headers={**jar, "X-CSRF-Token": "0" * 64}), 403)
        problem(await c.post(f"/tasks/{ours['task_id']}/cancel", headers=jar), 403)
        problem(await c.post("/tasks", json=spec, headers={
            **jar, **csrf, "Origin": "https://evil.example"}), 403)
        problem(await c.post("/tasks", json=spec, headers={
            **jar, **csrf, "Referer": "https://evil.example/page"}), 403)
        problem(await c.post("/tasks", json=spec, headers={**jar, **csrf, "Origin": "null"}), 403)
        made = await c.post("/tasks", json=spec, headers={**jar, **csrf})
        assert made.status_code == 202, made.text
        same = await c.post("/tasks", json=spec, headers={
            **jar, **csrf, "Origin": env.base_url, "Referer": env.base_url + "/"})
        assert same.status_code == 202, same.text
        # ... and the tasks are the key's tenant's.
        for r in (made, same):
            tid = r.json()["task_id"]
            assert (await c.get(f"/tasks/{tid}", headers=a)).status_code == 200
            problem(await c.get(f"/tasks/{tid}", headers=b), 404)
        # A request with an API key needs neither, even from another origin.
        keyed = await c.post("/tasks", json=spec, headers={**a, "Origin": "https://x.example"})
        assert keyed.status_code == 202, keyed.text
        # A login is worth its key's role: a reader's cookie reads and cannot submit.
        reader = cli(env, "keys", "create", "--tenant", "acme", "--role", "reader")
        rvalue, rme = await _login(c, reader)
        rjar = _cookie(rvalue, **{"X-CSRF-Token": rme["csrf_token"]})
        assert (await c.get("/tasks", headers=rjar)).status_code == 200
        assert problem(await c.post("/tasks", json=spec, headers=rjar), 403)["role"] == "reader"

        # Logging out needs the token too, then the cookie is dead everywhere.
        problem(await c.delete("/session", headers=jar), 403)
        out = await c.delete("/session", headers={**jar, **csrf})
        assert out.status_code == 204
        assert out.headers["set-cookie"].startswith(f'{LOGIN_COOKIE}=""')
        assert "max-age=0" in out.headers["set-cookie"].lower()
        problem(await c.get("/tasks", headers=jar), 401)
        problem(await c.get("/session", headers=jar), 401)
        problem(await c.post("/tasks", json=spec, headers={**jar, **csrf}), 401)


async def test_expiry_and_revoking_the_key_end_the_login(env: Env) -> None:
    await env.api(TASKFLOW_AUTH="true", TASKFLOW_SESSION_TTL_S="1")
    lasting = free_port()
    await env.api(port=lasting, TASKFLOW_AUTH="true")
    key = cli(env, "keys", "create", "--tenant", "acme")
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        value, _ = await _login(c, key)
        assert (await c.get("/tasks", headers=_cookie(value))).status_code == 200
        await asyncio.sleep(1.5)
        # The cookie is still sent (the server alone decides): it has expired.
        doc = problem(await c.get("/tasks", headers=_cookie(value)), 401)
        assert "expired" in doc["detail"]
        problem(await c.get("/session", headers=_cookie(value)), 401)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{lasting}", timeout=30) as c:
        by_cli, _ = await _login(c, key)
        other = cli(env, "keys", "create", "--tenant", "acme")
        by_sql, _ = await _login(c, other)
        for v in (by_cli, by_sql):
            assert (await c.get("/tasks", headers=_cookie(v))).status_code == 200
        # Revoking with the CLI ends the key's logins (its rows go) ...
        cli(env, "keys", "revoke", key)
        problem(await c.get("/tasks", headers=_cookie(by_cli)), 401)
        problem(await c.get("/session", headers=_cookie(by_cli)), 401)
        # ... and each use checks the key: one revoked by any other means counts at once
        # (no key cache in between).
        conn = await env.db()
        try:
            left = await conn.fetch("SELECT key_id FROM api_sessions")
            await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = $1",
                               other[4:].partition("_")[0])
        finally:
            await conn.close()
        assert [r["key_id"] for r in left] == [other[4:].partition("_")[0]]
        problem(await c.get("/tasks", headers=_cookie(by_sql)), 401)
        # A made-up cookie is no better.
        problem(await c.get("/tasks", headers=_cookie("made-up")), 401)
