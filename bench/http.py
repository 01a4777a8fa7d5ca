"""A minimal HTTP/1.1 keep-alive client for load generation.

httpx spends much client CPU per request, and on a small machine the load generator
shares the cores with the API, Kafka and Postgres, so that cost would be measured as
TaskFlow's. One connection per coroutine, requests written as prepared bytes, responses
parsed just enough (status, Content-Length or chunked body): a fraction of httpx's cost.
It only talks to our own API on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any


class HTTPError(Exception):
    """The server closed the connection or answered something we cannot parse."""


@dataclass
class Response:
    status: int
    body: bytes


class Connection:
    """One keep-alive connection; not shared between coroutines."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._r: asyncio.StreamReader | None = None
        self._w: asyncio.StreamWriter | None = None

    async def open(self) -> Connection:
        self._r, self._w = await asyncio.open_connection(self.host, self.port,
                                                         limit=1 << 20)
        return self

    async def close(self) -> None:
        if self._w is not None:
            self._w.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self._w.wait_closed()
            self._w = self._r = None

    def _head(self, method: str, path: str, length: int | None) -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if length is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {length}\r\n"
        return (head + "\r\n").encode()

    async def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        if self._w is None:
            await self.open()
        assert self._r is not None and self._w is not None
        self._w.write(self._head(method, path, None if body is None else len(body))
                      + (body or b""))
        try:
            head = await self._r.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.close()
            raise HTTPError(f"connection closed: {exc!r}") from None
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise HTTPError(f"bad status line {lines[0]!r}") from None
        length: int | None = None
        chunked = False
        closing = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "connection" and "close" in value.lower():
                closing = True
        if chunked:
            body_out = await self._chunked()
        elif length is not None:
            body_out = await self._r.readexactly(length)
        else:
            body_out = b""
        if closing:
            await self.close()
        return Response(status, body_out)

    async def _chunked(self) -> bytes:
        assert self._r is not None
        out = bytearray()
        while True:
            size = int((await self._r.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._r.readuntil(b"\r\n")
                return bytes(out)
            out += await self._r.readexactly(size)
            await self._r.readexactly(2)


async def hammer(host: str, port: int, *, total: int, concurrency: int,
                 make: Callable[[int], tuple[str, str, bytes | None]],
                 done: Callable[[int, Response], Awaitable[None] | None]) -> None:
    """Send ``total`` requests over ``concurrency`` connections as fast as they answer.

    ``make(i)`` returns ``(method, path, body)`` of request ``i``; ``done(i, response)``
    is called with each answer (it may be a coroutine function).
    """
    counter = iter(range(total))

    async def lane() -> None:
        conn = await Connection(host, port).open()
        try:
            for i in counter:
                method, path, body = make(i)
                resp = await conn.request(method, path, body)
                res = done(i, resp)
                if res is not None:
                    await res
        finally:
            await conn.close()

    await asyncio.gather(*(lane() for _ in range(min(concurrency, total))))


class Pool:
    """``size`` keep-alive connections to one server; a request waits for a free one."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self._free: asyncio.Queue[Connection] = asyncio.Queue()
        for _ in range(size):
            self._free.put_nowait(Connection(host, port))

    async def request(self, method: str, path: str, body: bytes | None = None) -> Response:
        conn = await self._free.get()
        try:
            return await conn.request(method, path, body)
        finally:
            self._free.put_nowait(conn)

    async def close(self) -> None:
        while not self._free.empty():
            with contextlib.suppress(Exception):
                await self._free.get_nowait().close()


async def paced(n: int, rate: float, fire: Callable[[], Coroutine[Any, Any, None]],
                progress: Callable[[int], object]) -> list[asyncio.Task[None]]:
    """Start ``fire()`` ``n`` times at a steady ``rate`` per second, from now, without
    waiting for any of them; returns their tasks."""
    tasks: list[asyncio.Task[None]] = []
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire()))
        progress(1)
    return tasks
