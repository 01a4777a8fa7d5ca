"""Request guards that run before FastAPI parses anything.

* The body limit is enforced while the body streams in: a declared Content-Length over
  the limit is refused at once, and a chunked body is refused as soon as it passes the
  limit. At most ``max_body_bytes`` are ever held.
* A body must be JSON (``application/json`` or ``+json``): 415 otherwise.
* JSON nested deeper than ``max_json_depth``, or containing NUL characters (Postgres
  cannot store them in jsonb), is refused with 422 before it reaches the parser.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem_response

_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
# The scope key under which the guard hands on the body it read and checked, so that an
# app inside it (``api.fastpath``) need not read and replay it again.
BODY_KEY = "taskflow.body"


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(body: bytes) -> int:
    """Maximum nesting of arrays/objects, ignoring brackets inside strings.

    Strings are cut out and everything but brackets deleted in C (re, bytes.translate),
    so the Python loop only sees the brackets themselves.
    """
    brackets = _STRINGS.sub(b"", body).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for b in brackets:
        if b in (0x5B, 0x7B):
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


class RequestGuard:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_json_depth: int) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.max_depth = max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _WITH_BODY:
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await self._problem(scope, send, 413, "Content too large", "too-large",
                                f"the body is larger than {self.max_body} bytes")
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await self._problem(scope, send, 413, "Content too large", "too-large",
                                    f"the body is larger than {self.max_body} bytes")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if body:
            ctype = headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json" and not ctype.endswith("+json"):
                await self._problem(scope, send, 415, "Unsupported media type",
                                    "unsupported-media-type",
                                    "send the body as application/json")
                return
            if json_depth(body) > self.max_depth:
                await self._problem(scope, send, 422, "Unprocessable content", "validation",
                                    f"JSON is nested deeper than {self.max_depth} levels",
                                    errors=[{"loc": ["body"], "msg": "nested too deeply",
                                             "type": "json_depth"}])
                return
            if b"\\u0000" in body or b"\x00" in body:
                await self._problem(scope, send, 422, "Unprocessable content", "validation",
                                    "JSON must not contain NUL characters",
                                    errors=[{"loc": ["body"], "msg": "contains NUL",
                                             "type": "nul_character"}])
                return
        scope[BODY_KEY] = body
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _problem(scope: Scope, send: Send, status: int, title: str, kind: str,
                       detail: str, **extra: Any) -> None:
        resp = problem_response(status, title, detail, kind=kind,
                                instance=scope.get("path", ""), **extra)
        await resp(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
