"""The projector's Postgres connections: the jsonb codec, plans made per execution, and
no reset query on release. Every module that reads or writes the read model through
asyncpg gets its connections here.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import orjson

from events.jsonsafe import jsonb_bytes, jsonb_text


def _jsonb_encode(value: Any) -> bytes:
    # Binary jsonb: a version byte, then the text. Bytes are JSON text already (a
    # record's value, validated by the codec), stored without parsing them again unless
    # they hold a float that jsonb would read back as an integer (see events.jsonsafe).
    return b"\x01" + (jsonb_bytes(value) if isinstance(value, bytes) else jsonb_text(value))


def _jsonb_decode(data: bytes) -> Any:
    return orjson.loads(data[1:])


# asyncpg prepares every statement. After five executions Postgres may switch to a
# generic plan made when the table was small and keep it as the table grows: the state
# lookup (task_id = ANY($1)) then became a sequential scan comparing every row with every
# id, each batch slower than the one before as the table grew. Plan each execution for
# its table. This is a connection parameter, not a SET: a pool runs RESET ALL on every
# release, which undid the SET after a connection's first use.
SERVER_SETTINGS = {"plan_cache_mode": "force_custom_plan"}


async def init_connection(conn: asyncpg.Connection) -> None:
    # Binary format, so that COPY (which is binary in asyncpg) can write jsonb too.
    await conn.set_type_codec("jsonb", encoder=_jsonb_encode, decoder=_jsonb_decode,
                              schema="pg_catalog", format="binary")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What a projector connection needs on release: nothing.

    asyncpg's default runs ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``,
    a round trip to Postgres per batch written. Projector connections hold no session
    state to undo: every statement runs in a transaction that ended before the release
    (the pool still rolls back one that did not), the advisory lock is transaction-scoped,
    and nothing LISTENs or SETs on them.
    """


async def create_pool(dsn: str, *, min_size: int, max_size: int) -> asyncpg.Pool:
    """The projector's connections: the jsonb codec, plans made per execution, and no
    reset query on release."""
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size,
                                     init=init_connection, reset=_keep_session,
                                     server_settings=SERVER_SETTINGS)


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, server_settings=SERVER_SETTINGS)
    await init_connection(conn)
    return conn
