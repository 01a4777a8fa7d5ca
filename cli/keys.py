"""``taskflow keys``: API keys, stored hashed, one tenant and one role each."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, update

from api.auth import hash_secret, new_key
from api.roles import DEFAULT_ROLE
from events import login_db, queries
from events.settings import Settings
from events.tables import api_keys


async def create(settings: Settings, tenant: str, role: str = DEFAULT_ROLE) -> str:
    key_id, secret, full = new_key()
    async with queries.short_engine(settings.database_url) as engine, engine.begin() as conn:
        await conn.execute(insert(api_keys).values(
            key_id=key_id, tenant=tenant, secret_hash=hash_secret(secret), role=role))
    return full


async def revoke(settings: Settings, key_id: str) -> bool:
    if key_id.startswith("tfk_"):
        key_id = key_id[4:].partition("_")[0]
    async with queries.short_engine(settings.database_url) as engine, engine.begin() as conn:
        res = await conn.execute(update(api_keys).where(
            api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None)).values(
            revoked_at=datetime.now(UTC)))
        # Its dashboard logins end with it (each use checks the key too; this frees them).
        await login_db.end_for_key(conn, key_id=key_id)
        return bool(res.rowcount)


async def listing(settings: Settings) -> list[dict[str, Any]]:
    async with queries.short_engine(settings.database_url) as engine:
        return await queries.api_key_list(engine)
