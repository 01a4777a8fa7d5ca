"""The ``http`` and ``email`` handlers in a real worker, against a real HTTP server and a
real SMTP server (aiosmtpd, with STARTTLS) started by the test."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from starlette.types import Receive, Scope, Send

from bench.webhooks import answer, read_body, serving
from tests.helpers import Env, free_port, wait_until

pytestmark = pytest.mark.slow


class Origin:
    """A real HTTP server with a few fixed answers, counting the requests to each path."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.seen: dict[str, dict[str, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        path = scope["path"]
        self.hits[path] = self.hits.get(path, 0) + 1
        self.seen[path] = {"method": scope["method"], "body": body,
                           "headers": {k.decode(): v.decode() for k, v in scope["headers"]}}
        if path == "/slow":
            await asyncio.sleep(3)
        status, out = {"/created": (201, b'{"ok": true}'), "/big": (200, b"x" * 100_000),
                       "/missing": (404, b"no"), "/broken": (503, b"down")}.get(path, (200, b""))
        await answer(send, status, out,
                     [(b"x-origin", b"yes"), (b"content-type", b"text/plain")])


@pytest.fixture
async def origin() -> AsyncIterator[tuple[Origin, int]]:
    app, port = Origin(), free_port()
    async with serving(app, port):
        yield app, port


async def run_tasks(env: Env, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        r = await c.post("/tasks:batch", json={"tasks": tasks})
        assert r.status_code == 202, r.text
        ids = [t["task_id"] for t in r.json()["items"]]

        async def finished() -> list[dict[str, Any]] | None:
            out = []
            for tid in ids:
                t = (await c.get(f"/tasks/{tid}")).json()
                if t.get("status") not in ("DONE", "FAILED"):
                    return None
                out.append(t)
            return out

        got = await wait_until(finished, timeout=60, what="tasks to finish")
        assert got is not None
        handlers = (await c.get("/handlers")).json()["types"]
        assert "http" in handlers and "email" in handlers
        return got


async def test_http_handler(env: Env, origin: tuple[Origin, int]) -> None:
    app, port = origin
    env.extra["TASKFLOW_OUTBOUND_ALLOW"] = "127.0.0.1"
    env.proc("projector")
    env.proc("worker")
    await env.api()
    base = f"http://127.0.0.1:{port}"
    created, big, missing, broken, expected, slow = await run_tasks(env, [
        {"title": "post", "type": "http", "payload": {
            "method": "POST", "url": f"{base}/created", "headers": {"x-mine": "1"},
            "body": {"a": 1}, "expected_status": 201}},
        {"title": "big", "type": "http", "payload": {"url": f"{base}/big"}},
        {"title": "404", "type": "http", "max_attempts": 3,
         "payload": {"url": f"{base}/missing"}},
        {"title": "503", "type": "http", "max_attempts": 3,
         "payload": {"url": f"{base}/broken"}},
        {"title": "unexpected", "type": "http", "max_attempts": 3,
         "payload": {"url": f"{base}/big", "expected_status": [201]}},
        {"title": "slow", "type": "http", "max_attempts": 2, "timeout_s": 30,
         "payload": {"url": f"{base}/slow", "timeout_s": 0.5}},
    ])
    assert created["status"] == "DONE", created
    assert created["result"]["status"] == 201
    assert created["result"]["body"] == '{"ok": true}'
    assert created["result"]["headers"]["x-origin"] == "yes"
    assert app.seen["/created"]["method"] == "POST"
    assert app.seen["/created"]["headers"]["x-mine"] == "1"
    assert app.seen["/created"]["body"] == b'{"a":1}'
    assert big["status"] == "DONE"
    assert big["result"]["truncated"] is True and len(big["result"]["body"]) == 4096
    # A 4xx fails at once; a 5xx is retried until the attempts run out.
    assert missing["status"] == "FAILED" and app.hits["/missing"] == 1
    assert "HTTP 404" in missing["error"]
    assert broken["status"] == "FAILED" and app.hits["/broken"] == 3
    assert expected["status"] == "FAILED" and "HTTP 200" in expected["error"]
    assert expected["attempt"] == 1  # an unexpected status below 500 is not retried
    # The request's own timeout is reported as such, not as the task's 30 s timeout.
    assert slow["status"] == "FAILED" and app.hits["/slow"] == 2  # retried, as transient
    assert "ReadTimeout after 0.5s" in slow["error"] and "timed out after" not in slow["error"]


async def test_http_handler_refuses_non_public_targets(env: Env,
                                                       origin: tuple[Origin, int]) -> None:
    app, port = origin
    env.proc("projector")
    env.proc("worker")  # no TASKFLOW_OUTBOUND_ALLOW
    await env.api()
    by_ip, by_name, metadata = await run_tasks(env, [
        {"title": "ip", "type": "http", "payload": {"url": f"http://127.0.0.1:{port}/"}},
        {"title": "name", "type": "http", "payload": {"url": f"http://localhost:{port}/"}},
        {"title": "md", "type": "http", "payload": {"url": "http://169.254.169.254/"}},
    ])
    for t in (by_ip, by_name, metadata):
        assert t["status"] == "FAILED" and "target refused" in t["error"], t
        assert t["attempt"] == 1  # not retried
    assert app.hits == {}


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[Envelope, bool]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append((envelope, session.ssl is not None))
        return "250 OK"


@pytest.fixture
def tls_files(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    yield cert, key


async def test_email_handler_with_starttls(env: Env, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    inbox, port = Inbox(), free_port()
    server = Controller(inbox, hostname="127.0.0.1", port=port, tls_context=ctx,
                        require_starttls=True)
    server.start()
    try:
        env.proc("projector")
        env.proc("worker", TASKFLOW_SMTP_HOST="127.0.0.1", TASKFLOW_SMTP_PORT=str(port),
                 TASKFLOW_SMTP_FROM="robot@taskflow.test", TASKFLOW_SMTP_CA_FILE=str(cert))
        await env.api()
        sent, bad = await run_tasks(env, [
            {"title": "mail", "type": "email", "payload": {
                "to": ["ops@example.com", "dev@example.com"], "subject": "Build done",
                "body": "All green.\n"}},
            {"title": "bad", "type": "email", "payload": {"subject": "no recipient"}},
        ])
    finally:
        server.stop()
    assert sent["status"] == "DONE", sent
    assert sent["result"]["starttls"] is True
    [(envelope, over_tls)] = inbox.messages
    assert over_tls
    assert envelope.mail_from == "robot@taskflow.test"
    assert envelope.rcpt_tos == ["ops@example.com", "dev@example.com"]
    msg = message_from_bytes(envelope.original_content or b"")
    assert msg["Subject"] == "Build done"
    assert msg["X-TaskFlow-Task"] == sent["task_id"]
    assert "All green." in msg.get_payload()
    assert bad["status"] == "FAILED" and "invalid payload" in bad["error"]
