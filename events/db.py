"""Postgres plumbing shared by the read-model modules: engines, database creation, migrations."""

from __future__ import annotations

from pathlib import Path

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An engine whose connections asyncpg makes from ``asyncpg_dsn(url)``, exactly as the
    raw asyncpg connections are made: libpq's ``sslmode`` and ``sslrootcert`` in the URL
    then mean the same on every path (SQLAlchemy would hand them to ``asyncpg.connect``
    as keyword arguments it does not take)."""
    dsn = asyncpg_dsn(url)

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(dsn)

    bare = make_url(url).set(query={})
    return create_async_engine(bare, async_creator=connect, pool_size=pool_size,
                               max_overflow=pool_size, pool_pre_ping=True)


def asyncpg_dsn(url: str) -> str:
    """The same URL without the SQLAlchemy driver suffix, for raw asyncpg connections.
    ``?ssl=MODE`` (SQLAlchemy's spelling) becomes ``?sslmode=MODE``, which asyncpg reads
    in a DSN; left as it is, asyncpg would send it to the server as a setting."""
    u = make_url(url).set(drivername="postgresql")
    query = dict(u.query)
    if "ssl" in query:
        ssl = query.pop("ssl")
        query.setdefault("sslmode", ssl)
        u = u.set(query=query)
    return u.render_as_string(hide_password=False)


def _admin_dsn(url: str) -> str:
    return asyncpg_dsn(make_url(url).set(database="postgres").render_as_string(hide_password=False))


async def ensure_database(url: str, *, template: str | None = None) -> bool:
    """Create the database named in ``url`` if it does not exist; True if created."""
    u = make_url(url)
    name = u.database
    assert name
    admin = await asyncpg.connect(_admin_dsn(url))
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        tmpl = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{tmpl}')
        return True
    finally:
        await admin.close()


async def drop_database(url: str) -> None:
    u = make_url(url)
    name = u.database
    assert name
    admin = await asyncpg.connect(_admin_dsn(url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def alembic_config(url: str) -> object:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Run Alembic migrations to head (synchronously; Alembic runs its own event loop)."""
    from alembic import command
    from alembic.config import Config

    cfg = alembic_config(url)
    assert isinstance(cfg, Config)
    command.upgrade(cfg, "head")


def migration_head() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        try:
            rev = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
        except Exception:
            return None
    return str(rev) if rev is not None else None


# What a read-model query raises when Postgres is away, among other things: handlers
# of these ask ``database_down`` which it was.
DB_ERRORS: tuple[type[Exception], ...] = (sa_exc.DBAPIError, asyncpg.PostgresError,
                                          asyncpg.InterfaceError, OSError)


def database_down(exc: BaseException) -> bool:
    """True if ``exc`` says Postgres cannot be reached now (stopped, restarting, cut off),
    rather than that a statement was refused: such work is retried, not given up."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:  # SQLAlchemy wraps the driver's error
        seen.add(id(e))
        if isinstance(e, asyncpg.PostgresConnectionError | asyncpg.InterfaceError
                      | asyncpg.exceptions.OperatorInterventionError
                      | asyncpg.exceptions.TooManyConnectionsError
                      | OSError | TimeoutError):
            return True
        if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, sa_exc.InterfaceError | sa_exc.OperationalError):
            return True
        e = getattr(e, "orig", None) or e.__cause__
    return False
