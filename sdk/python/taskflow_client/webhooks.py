"""Checking a webhook delivery's signature (Standard Webhooks), for receivers.

TaskFlow signs each delivery with the webhook's secret (``whsec_<base64>``): the
``webhook-signature`` header holds ``v1,<base64 HMAC-SHA256>`` of
``<webhook-id>.<webhook-timestamp>.<body>``; the header may hold several, separated by
spaces, and one matching is enough.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

from taskflow_client.errors import TaskFlowError

SECRET_PREFIX = "whsec_"
TOLERANCE_S = 300  # how far a delivery's timestamp may be from now, either way


class InvalidSignature(TaskFlowError):
    """The delivery is not signed by this secret, or its timestamp is too far from now."""


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The signature TaskFlow sends for ``body``: ``v1,<base64>``."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def verify(secret: str, headers: Mapping[str, str], body: bytes, *,
           tolerance_s: float = TOLERANCE_S, now: float | None = None) -> None:
    """Raise ``InvalidSignature`` unless ``body`` with these headers was signed with
    ``secret`` within ``tolerance_s`` of ``now``. Header names are matched in any case."""
    h = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id, ts = h["webhook-id"], int(h["webhook-timestamp"])
        given = h["webhook-signature"].split()
    except (KeyError, ValueError):
        raise InvalidSignature("missing or malformed webhook-* headers") from None
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        raise InvalidSignature("the timestamp is outside the tolerance")
    expected = sign(secret, msg_id, ts, body)
    if not any(hmac.compare_digest(expected, s) for s in given):
        raise InvalidSignature("no signature matches the secret")
