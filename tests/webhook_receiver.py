"""A real HTTP webhook receiver on 127.0.0.1 that verifies every delivery with the
``standardwebhooks`` package (the edge of the world: the only fake the tests use)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import orjson
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.types import Receive, Scope, Send

from bench.webhooks import answer, read_body, serving


@dataclass
class Received:
    path: str
    msg_id: str
    body: dict[str, Any]
    raw: bytes = b""  # the body and headers as they came, for other verifiers
    headers: dict[str, str] = field(default_factory=dict)


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
    _hold: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
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
                self.received.append(Received(path, headers["webhook-id"], orjson.loads(body),
                                              body, headers))
        await answer(send, code)

    async def start(self) -> None:
        await self._hold.enter_async_context(serving(self, self.port))

    async def stop(self) -> None:
        await self._hold.aclose()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def event_ids(self, path: str) -> set[str]:
        return {r.body["id"] for r in self.received if r.path == path}
