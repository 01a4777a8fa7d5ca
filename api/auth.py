"""API keys, tenants and per-key rate limits.

A key looks like ``tfk_<key_id>_<secret>``. Postgres stores the key id, its tenant and a
SHA-256 of the secret; the secret itself is shown once, by ``taskflow keys create``.
With ``TASKFLOW_AUTH=false`` (the local default) every request is unscoped.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from api.problems import Problem
from events import queries

CACHE_TTL_S = 5.0  # seconds a key lookup is cached; also how long a revocation takes
# Entries of each per-key structure: key ids come from the client (a made-up one is
# looked up and cached as unknown too), so both are bounded.
CACHE_MAX = 10_000


class Unauthorized(Problem):
    status, title, kind = 401, "Unauthorized", "unauthorized"


class TooManyRequests(Problem):
    status, title, kind = 429, "Too many requests", "rate-limited"


@dataclass(frozen=True)
class Tenant:
    """Who is asking. ``scoped`` is False when auth is off: everything is visible."""

    name: str | None
    key_id: str | None = None
    scoped: bool = False


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> tuple[str, str, str]:
    """(key_id, secret, full key)."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(24)
    return key_id, secret, f"tfk_{key_id}_{secret}"


def parse_key(raw: str) -> tuple[str, str] | None:
    if not raw.startswith("tfk_"):
        return None
    key_id, _, secret = raw[4:].partition("_")
    return (key_id, secret) if key_id and secret else None


@dataclass
class Bucket:
    tokens: float
    at: float


@dataclass
class KeyRing:
    """Key lookups with a short cache, and one token bucket per key."""

    engine: AsyncEngine
    rate_per_s: float
    burst: int
    _cache: OrderedDict[str, tuple[float, str | None, str]] = field(default_factory=OrderedDict)
    _buckets: OrderedDict[str, Bucket] = field(default_factory=OrderedDict)

    async def tenant_of(self, raw: str) -> Tenant | None:
        parsed = parse_key(raw)
        if parsed is None:
            return None
        key_id, secret = parsed
        now = time.monotonic()
        hit = self._cache.get(key_id)
        if hit is None or now - hit[0] > CACHE_TTL_S:
            row = await queries.api_key(self.engine, key_id=key_id)
            hit = (now, row[0] if row else None, row[1] if row else "")
            self._cache[key_id] = hit
            self._cache.move_to_end(key_id)
            while len(self._cache) > CACHE_MAX:
                self._cache.popitem(last=False)  # the least recently looked up
        _, tenant, digest = hit
        if tenant is None or not hmac.compare_digest(digest, hash_secret(secret)):
            return None
        return Tenant(name=tenant, key_id=key_id, scoped=True)

    def take(self, key: str) -> float:
        """Take one token; returns 0 if allowed, else seconds until a token is free."""
        if self.rate_per_s <= 0:
            return 0.0
        now = time.monotonic()
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = Bucket(tokens=float(self.burst), at=now)
            while len(self._buckets) > CACHE_MAX:
                # The least recently used key: its bucket has refilled the longest.
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        b.tokens = min(float(self.burst), b.tokens + (now - b.at) * self.rate_per_s)
        b.at = now
        if b.tokens >= 1:
            b.tokens -= 1
            return 0.0
        return (1 - b.tokens) / self.rate_per_s


async def authenticate(request: Request) -> Tenant:
    """The caller's tenant from its API key (``TenantDep``); 401 or 429 as a ``Problem``."""
    settings = request.app.state.settings
    ring: KeyRing = request.app.state.keys
    if not settings.auth:
        wait = ring.take("anonymous")
        if wait:
            raise TooManyRequests(f"rate limit exceeded; retry in {wait:.2f}s",
                                  retry_after=max(1, round(wait + 0.5)))
        return Tenant(name=None)
    raw = request.headers.get("x-api-key", "")
    auth = request.headers.get("authorization", "")
    if not raw and auth.lower().startswith("bearer "):
        raw = auth[7:].strip()
    if not raw:
        raise Unauthorized("an API key is required (Authorization: Bearer <key>)")
    tenant = await ring.tenant_of(raw)
    if tenant is None:
        raise Unauthorized("the API key is not valid or has been revoked")
    assert tenant.key_id is not None
    wait = ring.take(tenant.key_id)
    if wait:
        raise TooManyRequests(f"rate limit exceeded; retry in {wait:.2f}s",
                              retry_after=max(1, round(wait + 0.5)))
    return tenant


TenantDep = Annotated[Tenant, Depends(authenticate)]
