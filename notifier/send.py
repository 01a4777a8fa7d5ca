"""One HTTP attempt of one delivery: pinned to a checked address, signed, bounded."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from events import webhooks as wh
from events.outbound import Net, OutboundRefused, pin

ERROR_MAX = 500  # characters of an error kept in the attempt's event


@dataclass(frozen=True)
class Attempt:
    ok: bool
    status_code: int | None = None
    error: str | None = None


async def attempt(client: httpx.AsyncClient, *, url: str, secret: str, msg_id: str,
                  body: bytes, allow: tuple[Net, ...]) -> Attempt:
    """POST ``body`` to ``url`` with Standard Webhooks headers; a 2xx is a success.

    The host is resolved and checked again here (``events.outbound.pin``), and the
    connection goes to the address that was checked. Redirects are not followed: a 3xx
    is a failed attempt, so a redirect cannot lead past the check either.
    """
    try:
        pinned = await pin(url, allow)
    except OutboundRefused as exc:
        return Attempt(False, error=f"refused: {exc.reason}"[:ERROR_MAX])
    headers = {**wh.signed_headers(secret, msg_id, body), **pinned.headers,
               "user-agent": "taskflow-notifier"}
    try:
        async with client.stream("POST", pinned.url, content=body, headers=headers,
                                 extensions=pinned.extensions) as resp:
            code = resp.status_code
    except httpx.TimeoutException as exc:
        return Attempt(False, error=f"timeout: {type(exc).__name__}")
    except httpx.HTTPError as exc:
        return Attempt(False, error=f"{type(exc).__name__}: {exc}"[:ERROR_MAX])
    if 200 <= code < 300:
        return Attempt(True, code)
    return Attempt(False, code, f"HTTP {code}")
