"""``taskflow keys``: API keys, stored hashed, one tenant each."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update

from api.auth import hash_secret, new_key
from events.db import make_engine
from events.settings import Settings
from events.tables import api_keys


async def create(settings: Settings, tenant: str) -> str:
    key_id, secret, full = new_key()
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(api_keys).values(
                key_id=key_id, tenant=tenant, secret_hash=hash_secret(secret)))
    finally:
        await engine.dispose()
    return full


async def revoke(settings: Settings, key_id: str) -> bool:
    if key_id.startswith("tfk_"):
        key_id = key_id[4:].partition("_")[0]
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            res = await conn.execute(update(api_keys).where(
                api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None)).values(
                revoked_at=datetime.now(UTC)))
            return bool(res.rowcount)
    finally:
        await engine.dispose()


async def listing(settings: Settings) -> list[dict[str, Any]]:
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(select(api_keys.c.key_id, api_keys.c.tenant,
                                             api_keys.c.created_at, api_keys.c.revoked_at)
                                      .order_by(api_keys.c.created_at))
            return [{str(k): v for k, v in r._mapping.items()} for r in rows]
    finally:
        await engine.dispose()
