"""API keys, tenants and per-key rate limits.

A key looks like ``tfk_<key_id>_<secret>``. Postgres stores the key id, its tenant, its
role and a SHA-256 of the secret; the secret itself is shown once, by ``taskflow keys
create``. Each route needs a role (api/roles.py), checked here for every request. With
``TASKFLOW_AUTH=false`` every request is unscoped and may do everything (``admin``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from api import roles
from api.problems import Forbidden, Problem
from events import guards, queries
from events.db import DB_ERRORS, database_down

CACHE_TTL_S = 5.0  # seconds a key lookup is cached; also how long a revocation takes
# Entries of each per-key and per-address structure: key ids and addresses come from
# the client (a made-up id is looked up once and cached as unknown, apart from the known
# ones), so each is bounded.
CACHE_MAX = 10_000


class Unauthorized(Problem):
    status, title, kind = 401, "Unauthorized", "unauthorized"


class TooManyRequests(Problem):
    status, title, kind = 429, "Too many requests", "rate-limited"


@dataclass(frozen=True)
class Tenant:
    """Who is asking. ``scoped`` is False when auth is off: everything is visible, and
    the caller is ``admin``. ``role`` defaults to the least, so that a way of
    authenticating that forgets to say it grants nothing more."""

    name: str | None
    key_id: str | None = None
    scoped: bool = False
    role: str = "reader"


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
    """A token bucket held in this process."""

    tokens: float
    at: float

    def take(self, now: float, rate_per_s: float, burst: int, *, always: bool = False
             ) -> float:
        """Refill to ``now`` and take a token: 0 if there was one, else the seconds until
        there is one (none taken, unless ``always``: then the debt grows)."""
        self.tokens = min(float(burst), self.tokens + (now - self.at) * rate_per_s)
        self.at = now
        if self.tokens >= 1 or always:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / rate_per_s


def _put(cache: OrderedDict[str, Any], key: str, value: Any) -> None:
    """Store as the most recent entry; drop the least recent past ``CACHE_MAX``."""
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > CACHE_MAX:
        cache.popitem(last=False)


def _bucket(buckets: OrderedDict[str, Bucket], key: str, now: float, burst: int) -> Bucket:
    """``key``'s bucket, a full one if it has none."""
    b = buckets.get(key)
    if b is None:
        b = Bucket(tokens=float(burst), at=now)
        _put(buckets, key, b)
    return b


@dataclass
class KeyRing:
    """Key lookups with a short cache, and one token bucket per key (in Postgres)."""

    engine: AsyncEngine
    rate_per_s: float
    burst: int
    # Failed authentications each client address may make: ``fail_burst`` at once, then
    # ``fail_rate_per_s``; 0 = no limit.
    fail_rate_per_s: float = 1.0
    fail_burst: int = 20
    # key id -> (cached at, tenant, secret hash, role)
    _cache: OrderedDict[str, tuple[float, str, str, str]] = field(default_factory=OrderedDict)
    _unknown: OrderedDict[str, float] = field(default_factory=OrderedDict)
    _failures: OrderedDict[str, Bucket] = field(default_factory=OrderedDict)
    _local: OrderedDict[str, Bucket] = field(default_factory=OrderedDict)  # Postgres away

    async def tenant_of(self, raw: str, *, client: str = "") -> Tenant | None:
        """The key's tenant, or None. Raises ``TooManyRequests`` while ``client`` (its
        address) is over its budget of failed authentications: then no key it sends is
        looked up, unless it is a valid key this process already holds."""
        parsed = parse_key(raw)
        now = time.monotonic()
        if parsed is None:
            self.check_failures(client, now)
            self.failed(client, now)
            return None
        key_id, secret = parsed
        hit = self._cache.get(key_id)
        fresh = hit is not None and now - hit[0] <= CACHE_TTL_S
        if hit is not None and fresh and hmac.compare_digest(hit[2], hash_secret(secret)):
            return Tenant(name=hit[1], key_id=key_id, scoped=True, role=hit[3])
        self.check_failures(client, now)
        tenant: str | None
        if hit is not None and fresh:
            tenant, digest, role = hit[1], hit[2], hit[3]
        else:
            miss = self._unknown.get(key_id)
            if miss is not None and now - miss <= CACHE_TTL_S:
                tenant, digest, role = None, "", ""
            else:
                row = await queries.api_key(self.engine, key_id=key_id)
                # Known and unknown ids in separate bounded caches: made-up ids never
                # push the keys in use out of the cache.
                if row is None:
                    tenant, digest, role = None, "", ""
                    _put(self._unknown, key_id, now)
                else:
                    tenant, digest, role = row
                    _put(self._cache, key_id, (now, tenant, digest, role))
        if tenant is None or not hmac.compare_digest(digest, hash_secret(secret)):
            self.failed(client, now)
            return None
        return Tenant(name=tenant, key_id=key_id, scoped=True, role=role)

    def check_failures(self, client: str, now: float) -> None:
        """``TooManyRequests`` while ``client`` has no failed authentication left."""
        if self.fail_rate_per_s <= 0 or client not in self._failures:
            return
        probe = Bucket(**vars(self._failures[client]))  # looked at, not spent
        wait = probe.take(now, self.fail_rate_per_s, self.fail_burst)
        if wait:
            raise TooManyRequests(f"too many failed authentications; retry in {wait:.2f}s",
                                  retry_after=max(1, round(wait + 0.5)))

    def failed(self, client: str, now: float) -> None:
        """Spend one of ``client``'s failed-authentication tokens."""
        if self.fail_rate_per_s > 0:
            _bucket(self._failures, client, now, self.fail_burst).take(
                now, self.fail_rate_per_s, self.fail_burst, always=True)

    async def take(self, key: str) -> float:
        """Take one of ``key``'s tokens, from the bucket every API process shares
        (``events.guards``): 0 if allowed, else seconds until a token is free.

        While Postgres cannot be reached, from a bucket of this process instead: submits
        go to the log and keep working through a database outage, limited per process.
        """
        if self.rate_per_s <= 0:
            return 0.0
        try:
            return await guards.take(self.engine, key=key, rate_per_s=self.rate_per_s,
                                     burst=self.burst)
        except DB_ERRORS as exc:
            if not database_down(exc):
                raise
        now = time.monotonic()
        return _bucket(self._local, key, now, self.burst).take(now, self.rate_per_s,
                                                               self.burst)


def check_role(request: Request, tenant: Tenant) -> None:
    """``Forbidden`` unless the caller's role is at least what the route needs
    (``roles.ROUTE_ROLES``, by the route's path template and the method)."""
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    needed = roles.required(request.method, path)
    if not roles.allows(tenant.role, needed):
        raise Forbidden(f"{request.method} {path} needs the role {needed}; "
                        f"this key's role is {tenant.role}", required_role=needed,
                        role=tenant.role)


async def authenticate(request: Request) -> Tenant:
    """The caller's tenant from its API key (``TenantDep``), allowed the route's role;
    401, 403 or 429 as a ``Problem``."""
    settings = request.app.state.settings
    ring: KeyRing = request.app.state.keys
    if not settings.auth:
        wait = await ring.take("anonymous")
        if wait:
            raise TooManyRequests(f"rate limit exceeded; retry in {wait:.2f}s",
                                  retry_after=max(1, round(wait + 0.5)))
        return Tenant(name=None, role="admin")
    raw = request.headers.get("x-api-key", "")
    auth = request.headers.get("authorization", "")
    if not raw and auth.lower().startswith("bearer "):
        raw = auth[7:].strip()
    if not raw:
        raise Unauthorized("an API key is required (Authorization: Bearer <key>)")
    client = request.client.host if request.client else ""
    tenant = await ring.tenant_of(raw, client=client)
    if tenant is None:
        raise Unauthorized("the API key is not valid or has been revoked")
    assert tenant.key_id is not None
    check_role(request, tenant)
    wait = await ring.take(tenant.key_id)
    if wait:
        raise TooManyRequests(f"rate limit exceeded; retry in {wait:.2f}s",
                              retry_after=max(1, round(wait + 0.5)))
    return tenant


TenantDep = Annotated[Tenant, Depends(authenticate)]
