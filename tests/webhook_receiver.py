"""A real HTTP webhook receiver on 127.0.0.1 that verifies every delivery with the
``standardwebhooks`` package (the edge of the world: the only fake the tests use)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.types import Receive, Scope, Send


@dataclass
class Received:
    path: str
    msg_id: str
    body: dict[str, Any]


@dataclass
class Receiver:
    """Answers ``status`` (204) to verified deliveries, 400 to unverifiable ones.

    ``secrets`` maps a path to the secret its deliveries must verify with; ``delay_s``
    holds each answer that long (a slow endpoint), per path.
    """

    port: int
    secrets: dict[str, str] = field(default_factory=dict)
    status: dict[str, int] = field(default_factory=dict)
    delay_s: dict[str, float] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        path = scope["path"]
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        await asyncio.sleep(self.delay_s.get(path, 0))
        try:
            Webhook(self.secrets[path]).verify(body, headers)
        except (KeyError, WebhookVerificationError) as exc:
            self.rejected.append(f"{path}: {exc!r}")
            code = 400
        else:
            code = self.status.get(path, 204)
            if code < 300:
                self.received.append(Received(path, headers["webhook-id"], orjson.loads(body)))
        await send({"type": "http.response.start", "status": code, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def start(self) -> None:
        config = uvicorn.Config(self, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        for _ in range(500):  # uvicorn sets a flag, not an event, once it listens
            if self._server.started:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the receiver did not start")

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def event_ids(self, path: str) -> set[str]:
        return {r.body["id"] for r in self.received if r.path == path}
