"""API keys, tenants and per-key rate limits.

A key looks like ``tfk_<key_id>_<secret>``. Postgres stores the key id, its tenant, its
role and a SHA-256 of the secret; the secret itself is shown once, by ``taskflow keys
create``. Each route needs a role (api/roles.py), checked here for every request. With
``TASKFLOW_AUTH=false`` every request is unscoped and may do everything (``admin``).

The dashboard logs in once with a key (``POST /session``, ``api/login.py``) and then
sends the ``taskflow_session`` cookie instead: it resolves to the same tenant and key
id (and role) as the key itself. A write authenticated by that cookie must come from this origin
and carry the ``X-CSRF-Token`` derived from it; one with an API key header needs neither.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from api import roles
from api.problems import Forbidden, Problem
from events import constants, guards, login_db, queries
from events.db import DB_ERRORS, database_down
from events.models import ANONYMOUS

CACHE_TTL_S = 5.0  # seconds a key lookup is cached; also how long a revocation takes
# Entries of each per-key and per-address structure: key ids and addresses come from
# the client (a made-up id is looked up once and cached as unknown, apart from the known
# ones), so each is bounded.
CACHE_MAX = 10_000
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


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

    @property
    def actor(self) -> str:
        """The ``actor`` of the events this caller's commands write: the key id (never
        the secret), or ``anonymous`` with auth off."""
        return self.key_id or ANONYMOUS


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

    async def login_of(self, token: str, *, client: str = "") -> login_db.Login | None:
        """The key id and tenant a login cookie's ``token`` stands for, or None (unknown,
        expired, logged out, or its key revoked). Not cached: a logout or a revocation
        holds at once in every API process. A miss spends a failed authentication."""
        now = time.monotonic()
        self.check_failures(client, now)
        login = await login_db.find(self.engine, token=token)
        if login is None:
            self.failed(client, now)
        return login

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

    async def spend(self, key: str) -> None:
        """Take one of ``key``'s tokens; ``TooManyRequests`` when it has none."""
        wait = await self.take(key)
        if wait:
            raise TooManyRequests(f"rate limit exceeded; retry in {wait:.2f}s",
                                  retry_after=max(1, round(wait + 0.5)))

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


def csrf_token(token: str) -> str:
    """The ``X-CSRF-Token`` that goes with a login cookie's ``token``.

    Derived from the token, so nothing more is stored, and only a page that can read the
    answers of this origin (``POST``/``GET /session``) learns it: another site's page can
    make the browser send the cookie, never read this.
    """
    return hmac.new(token.encode(), b"taskflow csrf", hashlib.sha256).hexdigest()


def same_origin(request: Request) -> bool:
    """False when the browser says the request comes from a page of another origin:
    an ``Origin`` (else a ``Referer``) whose host and port are not this ``Host``."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source:
        return True
    return urlsplit(source).netloc.lower() == request.headers.get("host", "").lower()


def check_cookie_write(request: Request, token: str) -> None:
    """``Forbidden`` unless a write authenticated by a login cookie comes from this origin
    with the cookie's ``X-CSRF-Token``; reads pass."""
    if request.method not in UNSAFE_METHODS:
        return
    if not same_origin(request):
        raise Forbidden("a cross-origin request cannot use the login cookie")
    sent = request.headers.get(constants.CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode(), csrf_token(token).encode()):
        raise Forbidden(f"a write with the login cookie needs the {constants.CSRF_HEADER} "
                        "header that POST /session and GET /session return")


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
    """The caller's tenant from its API key, or else from its login cookie (``TenantDep``),
    allowed the route's role;
    401, 403 or 429 as a ``Problem``."""
    settings = request.app.state.settings
    ring: KeyRing = request.app.state.keys
    if not settings.auth:
        await ring.spend("anonymous")
        return Tenant(name=None, role="admin")
    raw = request.headers.get("x-api-key", "")
    auth = request.headers.get("authorization", "")
    if not raw and auth.lower().startswith("bearer "):
        raw = auth[7:].strip()
    client = request.client.host if request.client else ""
    if raw:
        tenant = await ring.tenant_of(raw, client=client)
        if tenant is None:
            raise Unauthorized("the API key is not valid or has been revoked")
    else:
        token = request.cookies.get(constants.LOGIN_COOKIE, "")
        if not token:
            raise Unauthorized("an API key is required (Authorization: Bearer <key>)")
        login = await ring.login_of(token, client=client)
        if login is None:
            raise Unauthorized("the login has expired or ended; log in again")
        check_cookie_write(request, token)
        tenant = Tenant(name=login.tenant, key_id=login.key_id, scoped=True, role=login.role)
    assert tenant.key_id is not None
    check_role(request, tenant)
    await ring.spend(tenant.key_id)
    return tenant


TenantDep = Annotated[Tenant, Depends(authenticate)]
