"""A small HTTP/1.1 client on asyncio streams: keep-alive pool, JSON bodies, SSE.

Common clients spend much more CPU per request than the API spends answering it, and a
client that submits at concurrency shares the machine with its own work: this one writes
each request as prepared bytes and parses the answer just enough (status, the headers,
Content-Length or chunked body). It speaks to a TaskFlow API over http or https.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_mod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from taskflow_client.errors import TransportError

MAX_HEAD = 1 << 16  # bytes of a response's status line and headers
READ_LIMIT = 1 << 20  # the stream reader's buffer
# seconds without a byte before a stream counts as dead: the API sends a heartbeat
# comment every 15 s (TASKFLOW_SSE_HEARTBEAT_S), so this allows for three lost ones
STREAM_IDLE_S = 60.0


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes


class _Conn:
    __slots__ = ("r", "used", "w")

    def __init__(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.r = r
        self.w = w
        self.used = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.w.close()


class _Stale(Exception):
    """A reused keep-alive connection the server had closed: nothing was answered."""


class Transport:
    """Keep-alive connections to one API; at most ``max_connections`` at once.

    :param base_url: ``http://host:port`` or ``https://…``, with an optional path prefix.
    :param headers: sent with every request (the API key).
    :param max_connections: open connections at most; a request waits for a free one.
    :param timeout_s: for connecting and for each answer (not for a stream's events).
    """

    def __init__(self, base_url: str, *, headers: dict[str, str] | None = None,
                 max_connections: int = 64, timeout_s: float = 30.0,
                 ssl: ssl_mod.SSLContext | None = None) -> None:
        u = urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"base_url must be http(s)://host[:port]: {base_url!r}")
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.prefix = u.path.rstrip("/")
        self.ssl: ssl_mod.SSLContext | None = None
        if u.scheme == "https":
            self.ssl = ssl or ssl_mod.create_default_context()
        self.timeout_s = timeout_s
        host = self.host if ":" not in self.host else f"[{self.host}]"
        default_port = self.port == (443 if self.ssl else 80)
        authority = host if default_port else f"{host}:{self.port}"
        fixed = {"Host": authority, "User-Agent": "taskflow-client",
                 "Accept": "application/json", **(headers or {})}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False

    async def _open(self) -> _Conn:
        try:
            async with asyncio.timeout(self.timeout_s):
                r, w = await asyncio.open_connection(self.host, self.port, ssl=self.ssl,
                                                     limit=READ_LIMIT)
        except (OSError, TimeoutError) as exc:
            raise TransportError(f"cannot connect to {self.host}:{self.port}: {exc!r}",
                                 url=f"{self.host}:{self.port}", connect_failed=True) from None
        return _Conn(r, w)

    def _head(self, method: str, path: str, body: bytes | None,
              headers: dict[str, str] | None) -> bytes:
        head = f"{method} {self.prefix}{path} HTTP/1.1\r\n{self._fixed}"
        if headers:
            head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return (head + "\r\n").encode("latin-1")

    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None,
                      timeout_s: float | None = None) -> Response:
        """One request and its whole answer. Raises ``TransportError`` when there is none."""
        if self._closed:
            raise TransportError("the client is closed", method=method, url=path)
        raw = self._head(method, path, body, headers) + (body or b"")
        async with self._slots:
            for _ in range(2):
                conn = self._idle.pop() if self._idle else await self._open()
                try:
                    async with asyncio.timeout(timeout_s or self.timeout_s):
                        resp, keep = await self._exchange(conn, raw)
                except _Stale:
                    conn.close()
                    continue  # the server closed it while idle: once more on a new one
                except TimeoutError:
                    conn.close()
                    raise TransportError(f"{method} {path}: no answer in time",
                                         method=method, url=path) from None
                except (OSError, asyncio.IncompleteReadError, ValueError,
                        asyncio.LimitOverrunError) as exc:
                    conn.close()
                    raise TransportError(f"{method} {path}: {exc!r}", method=method,
                                         url=path) from None
                except BaseException:
                    conn.close()
                    raise
                if keep and not self._closed:
                    conn.used = True
                    self._idle.append(conn)
                else:
                    conn.close()
                return resp
        raise TransportError(f"{method} {path}: the connection closed", method=method,
                             url=path)

    async def _exchange(self, conn: _Conn, raw: bytes) -> tuple[Response, bool]:
        conn.w.write(raw)
        try:
            status, headers = await _read_head(conn.r)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            if conn.used and (not isinstance(exc, asyncio.IncompleteReadError)
                              or not exc.partial):
                raise _Stale from None
            raise
        if headers.get("transfer-encoding", "").lower().endswith("chunked"):
            body = b"".join([c async for c in _chunks(conn.r)])
        elif "content-length" in headers:
            body = await conn.r.readexactly(int(headers["content-length"]))
        else:
            body = await conn.r.read()  # until the server closes
            return Response(status, headers, body), False
        keep = headers.get("connection", "").lower() != "close"
        return Response(status, headers, body), keep

    @contextlib.asynccontextmanager
    async def stream(self, path: str, headers: dict[str, str] | None = None, *,
                     idle_s: float = STREAM_IDLE_S
                     ) -> AsyncIterator[tuple[Response, AsyncIterator[bytes]]]:
        """A GET whose body is read as it comes, on its own connection (an SSE stream).

        Yields the response (status and headers; ``body`` holds an error answer's body)
        and an iterator over the body's chunks, which raises ``TransportError`` when
        nothing arrives for ``idle_s`` seconds (a connection that died silently).
        """
        conn = await self._open()
        try:
            try:
                async with asyncio.timeout(self.timeout_s):
                    conn.w.write(self._head("GET", path, None, {
                        "Accept": "text/event-stream", **(headers or {})}))
                    status, head = await _read_head(conn.r)
            except TimeoutError:
                raise TransportError(f"GET {path}: no answer in time", url=path) from None
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                raise TransportError(f"GET {path}: {exc!r}", url=path) from None
            chunked = head.get("transfer-encoding", "").lower().endswith("chunked")
            if status != 200:
                body = b""
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.timeout_s):
                        if chunked:
                            body = b"".join([c async for c in _chunks(conn.r)])
                        else:
                            body = await conn.r.readexactly(
                                int(head.get("content-length", "0")))
                yield Response(status, head, body), _empty()
                return
            yield Response(status, head, b""), _body(conn.r, chunked, path, idle_s)
        finally:
            conn.close()

    async def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover


async def _body(r: asyncio.StreamReader, chunked: bool, path: str,
                idle_s: float) -> AsyncIterator[bytes]:
    chunks = _chunks(r) if chunked else _raw(r)
    try:
        while True:
            async with asyncio.timeout(idle_s):
                data = await anext(chunks, None)
            if data is None:
                return
            yield data
    except TimeoutError:
        raise TransportError(f"GET {path}: nothing for {idle_s:g} s, not even a heartbeat",
                             url=path) from None
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        raise TransportError(f"GET {path}: the stream broke: {exc!r}", url=path) from None


async def _raw(r: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while data := await r.read(65536):
        yield data


async def _read_head(r: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    while True:
        raw = await r.readuntil(b"\r\n\r\n")
        if len(raw) > MAX_HEAD:
            raise ValueError("response head too large")
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ValueError(f"bad status line {lines[0]!r}")
        status = int(parts[1])
        if 100 <= status < 200:
            continue  # an interim answer: the real one follows
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return status, headers


async def _chunks(r: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while True:
        size = int((await r.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            # Trailers, if any, end with an empty line.
            while (await r.readuntil(b"\r\n")) != b"\r\n":
                pass
            return
        data = await r.readexactly(size)
        await r.readexactly(2)
        yield data
