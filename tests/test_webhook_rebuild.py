"""``projections rebuild`` of the webhook projection: folded into a shadow schema while
the live projector goes on, then swapped in (new tables, same indexes)."""

from __future__ import annotations

import asyncio

import httpx

from projector import webhooks as hooks_projection
from tests.helpers import Env, wait_until
from tests.test_webhooks import hooks_env, settings_of, start

__all__ = ["hooks_env"]

TABLES = ["webhooks", "webhook_deliveries", "webhook_events"]
_OIDS = "SELECT relname, oid FROM pg_class WHERE relname = ANY($1::text[]) " \
        "AND relnamespace = 'public'::regnamespace"
_INDEXES = "SELECT tablename, indexname, indexdef FROM pg_indexes " \
           "WHERE schemaname = 'public' AND tablename = ANY($1::text[])"


async def test_rebuild_swaps_in_a_shadow_while_the_projector_goes_on(hooks_env: Env) -> None:
    env = hooks_env
    await start(env)
    s = settings_of(env)
    conn = await env.db()
    try:
        async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:

            async def make(i: int) -> str:
                r = await c.post("/webhooks", json={"url": f"http://127.0.0.1:9/{i}",
                                                    "events": ["task.done"]})
                assert r.status_code == 201, r.text
                return str(r.json()["webhook_id"])

            first = [await make(i) for i in range(3)]
            await c.post(f"/webhooks/{first[0]}:rotate-secret")
            oids = dict(await conn.fetch(_OIDS, TABLES))
            indexes = sorted(tuple(r) for r in await conn.fetch(_INDEXES, TABLES))
            assert len(oids) == 3 and indexes
            # Writes keep coming while the rebuild folds and swaps.
            rows, more = await asyncio.gather(
                hooks_projection.rebuild(s), asyncio.gather(*(make(i) for i in range(3, 8))))
            assert rows >= 3
            for hid in [*first, *more]:  # every one readable, whichever side it landed
                got = await c.get(f"/webhooks/{hid}")
                assert got.status_code == 200, got.text

            async def all_projected() -> bool:
                return bool(await conn.fetchval("SELECT count(*) FROM webhooks") == 8)

            await wait_until(all_projected, what="every webhook in the swapped-in table")
            # The live projector applies into the new tables after the swap.
            late = await make(8)
            assert (await c.get(f"/webhooks/{late}")).status_code == 200
        after = dict(await conn.fetch(_OIDS, TABLES))
        assert set(after) == set(oids) and all(after[t] != oids[t] for t in TABLES)
        assert sorted(tuple(r) for r in await conn.fetch(_INDEXES, TABLES)) == indexes
        assert await conn.fetchval("SELECT count(*) FROM pg_namespace "
                                   "WHERE nspname LIKE 'rebuild_hooks_%'") == 0
        assert await hooks_projection.verify(s) == []
    finally:
        await conn.close()
