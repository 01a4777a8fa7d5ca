"""Request guards that run before FastAPI parses anything.

* Headers larger than ``max_header_bytes`` in all are refused with 431.
* The body limit is enforced while the body streams in: a declared Content-Length over
  the limit is refused at once, and a chunked body is refused as soon as it passes the
  limit. At most ``max_body_bytes`` are ever held.
* A body must be JSON (``application/json`` or ``+json``): 415 otherwise.
* A JSON body is parsed once and walked once (``inspect_json``), and refused with 422
  if any part of it is a value TaskFlow cannot carry exactly (``events.jsonsafe``):
  too deep, too many keys, an integer outside 64 bits, NaN or an infinity, negative
  zero, a NUL or a lone surrogate. The cost is linear in the body: no regular
  expression runs over it, and each parser on the request path is linear too.
"""

from __future__ import annotations

import gc
import json
from typing import Any, Final

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import problem_response
from events import jsonsafe
from events.constants import MAX_HEADER_BYTES, MAX_JSON_KEYS
from events.errors import UnsafeJson

_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
# The scope key under which the guard hands on the body it read and checked, so that an
# app inside it (``api.fastpath``) need not read and replay it again.
BODY_KEY = "taskflow.body"
# ... and the body as the guard parsed it: parsing a large body again costs as much again.
DOC_KEY = "taskflow.doc"

# orjson reads an integer past 64 bits as a float, so a body with a run of this many
# digits is parsed by the stdlib instead, which keeps every integer exact. Signed 64-bit
# integers have at most 19 digits, and -10**18 - 1 is the shortest one orjson cannot hold.
_LONG_DIGITS: Final = b"9" * 19
_DIGITS_AS_9: Final = bytes.maketrans(b"0123456789", b"9" * 10)


def inspect_json(body: bytes, *, max_depth: int, max_keys: int = MAX_JSON_KEYS) -> Any:
    """Parse ``body`` once and walk it once; raise ``UnsafeJson`` (``loc`` from "body").
    Returns the parsed body, for an app inside the guard to use instead of parsing again.

    orjson parses almost every body. The stdlib parses the rest: a body orjson refuses
    (NaN, an infinity, a lone surrogate, or not JSON at all) or one with a long run of
    digits. It keeps NaN, surrogates and big integers as they are, so the walk names
    where they are; what it cannot parse either is not JSON.
    """
    # A body can hold a hundred thousand containers: with the collector on, allocating
    # them set off collection after collection. A parsed body has no cycles, so reference
    # counting frees all of it; the collector has nothing to find here.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _inspect(body, max_depth, max_keys)
    finally:
        if collecting:
            gc.enable()


def _inspect(body: bytes, max_depth: int, max_keys: int) -> Any:
    try:
        doc = orjson.loads(body)
        exact = _LONG_DIGITS not in body.translate(_DIGITS_AS_9)
    except orjson.JSONDecodeError:
        exact = False
    if not exact:
        try:
            doc = json.loads(body)
        except RecursionError:
            raise UnsafeJson(f"nested deeper than {max_depth} levels", "json_depth",
                             ["body"]) from None
        except ValueError as exc:  # JSONDecodeError, bad UTF-8, an integer of 4,300+ digits
            raise UnsafeJson(f"not valid JSON: {exc}", "json_invalid", ["body"]) from None
    jsonsafe.check(doc, max_depth=max_depth, max_keys=max_keys, loc=["body"])
    return doc


def _printable(loc: list[str | int]) -> list[str | int]:
    """``loc`` with each lone surrogate in a key spelled ``\\udXXX``: the response is
    UTF-8, which cannot carry the key itself."""
    return [p.encode("utf-8", "backslashreplace").decode() if isinstance(p, str) else p
            for p in loc]


class RequestGuard:
    """Body limit, media type and ``inspect_json``, in front of the whole app."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_json_depth: int,
                 max_json_keys: int = MAX_JSON_KEYS,
                 max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self.app = app
        self.max_headers = max_header_bytes
        self.max_body = max_body_bytes
        self.max_depth = max_json_depth
        self.max_keys = max_json_keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # httptools, unlike h11, sets no limit on headers: bound them here, for every
        # request, before any of them is parsed or looked up.
        if sum(len(k) + len(v) for k, v in scope["headers"]) > self.max_headers:
            await self._problem(scope, send, 431, "Request header fields too large",
                                "header-too-large",
                                f"the headers are larger than {self.max_headers} bytes")
            return
        if scope["method"] not in _WITH_BODY:
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
            try:
                scope[DOC_KEY] = inspect_json(body, max_depth=self.max_depth,
                                              max_keys=self.max_keys)
            except UnsafeJson as exc:
                await self._problem(scope, send, 422, "Unprocessable content", "validation",
                                    str(exc), errors=[{"loc": _printable(exc.loc),
                                                       "msg": exc.msg, "type": exc.kind}])
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
