"""Dashboard logins in Postgres (table ``api_sessions``): made, found and ended.

Only a SHA-256 of the cookie's token is stored, so a copy of the table logs nobody in.
A login counts while it has not expired (Postgres's clock, checked on every use) and
while the key it was made with is not revoked; every API process sees a logout at once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from events.tables import api_keys, api_logins


@dataclass(frozen=True)
class Login:
    """Who a login cookie stands for."""

    key_id: str
    tenant: str
    expires_at: datetime
    role: str = "reader"  # the key's role, read on every use


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create(engine: AsyncEngine, *, token: str, key_id: str, tenant: str, role: str,
                 ttl_s: float) -> Login:
    """Store a login for ``token``, good for ``ttl_s`` seconds; expired ones are dropped."""
    expires = func.now() + timedelta(seconds=ttl_s)
    async with engine.begin() as conn:
        await conn.execute(delete(api_logins).where(api_logins.c.expires_at <= func.now()))
        row = (await conn.execute(
            insert(api_logins).values(token_hash=token_hash(token), key_id=key_id,
                                      tenant=tenant, expires_at=expires)
            .returning(api_logins.c.expires_at))).one()
    return Login(key_id=key_id, tenant=tenant, expires_at=row.expires_at, role=role)


async def find(engine: AsyncEngine, *, token: str) -> Login | None:
    """The login ``token`` stands for, if it has not expired and its key is not revoked.

    The tenant is the key's own, so a login resolves to what its key would.
    """
    q = (select(api_logins.c.key_id, api_keys.c.tenant, api_logins.c.expires_at,
                api_keys.c.role)
         .join(api_keys, api_keys.c.key_id == api_logins.c.key_id)
         .where(api_logins.c.token_hash == token_hash(token),
                api_logins.c.expires_at > func.now(), api_keys.c.revoked_at.is_(None)))
    async with engine.connect() as conn:
        row = (await conn.execute(q)).first()
    if row is None:
        return None
    return Login(key_id=str(row.key_id), tenant=str(row.tenant), expires_at=row.expires_at,
                 role=str(row.role))


async def end(engine: AsyncEngine, *, token: str) -> None:
    """Log ``token`` out (nothing happens if it was not logged in)."""
    async with engine.begin() as conn:
        await conn.execute(delete(api_logins).where(
            api_logins.c.token_hash == token_hash(token)))


async def end_for_key(conn: AsyncConnection, *, key_id: str) -> int:
    """End every login made with ``key_id`` (its revocation), in the caller's transaction."""
    res = await conn.execute(delete(api_logins).where(api_logins.c.key_id == key_id))
    return int(res.rowcount)
