"""TaskFlow over TLS to PostgreSQL, against a real server that refuses anything else.

``TASKFLOW_DATABASE_SSLMODE`` and ``TASKFLOW_DATABASE_SSLROOTCERT`` reach every path to
Postgres: migrations, the SQLAlchemy engine (API, scheduler), the raw asyncpg
connections (change feed, projector, notifier). A task goes through the whole system.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from events.db import asyncpg_dsn, ensure_database
from events.settings import Settings
from tests.helpers import Env, free_port, wait_until
from tests.test_api import cli
from tests.tls_postgres import TlsPostgres, tls_postgres


@pytest.fixture(scope="module")
def pg() -> Iterator[TlsPostgres]:
    with tls_postgres() as server:
        yield server


def test_the_tls_settings_go_into_the_url_every_driver_reads() -> None:
    s = Settings(database_url="postgresql+asyncpg://u:p@h:5432/db?ssl=prefer",
                 database_sslmode="verify-full", database_sslrootcert="/etc/ca.pem")
    dsn = asyncpg_dsn(s.database_url)
    assert "sslmode=verify-full" in dsn and "sslrootcert=%2Fetc%2Fca.pem" in dsn
    assert "ssl=" not in dsn.replace("sslmode=", "").replace("sslrootcert=", "")
    # SQLAlchemy's ?ssl= (what the Helm chart writes) is read as sslmode by raw asyncpg.
    assert asyncpg_dsn("postgresql+asyncpg://u:p@h/db?ssl=require").endswith("?sslmode=require")


async def test_a_task_runs_end_to_end_over_verified_tls(env: Env, pg: TlsPostgres) -> None:
    url = pg.url(env.name)
    env.extra.update({"TASKFLOW_DATABASE_URL": url, "TASKFLOW_DATABASE_SSLMODE": "verify-full",
                      "TASKFLOW_DATABASE_SSLROOTCERT": str(pg.ca)})
    tls = Settings(database_url=url, database_sslmode="verify-full",
                   database_sslrootcert=str(pg.ca)).database_url
    await ensure_database(tls)
    cli(env, "migrate")  # the tables, over TLS
    # Without TLS the server refuses: whatever works below went over TLS.
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
        await asyncpg.connect(asyncpg_dsn(url) + "?sslmode=disable")
    env.proc("projector")
    env.proc("worker")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        r = await c.post("/tasks", json={"title": "tls", "type": "echo",
                                         "payload": {"message": "over TLS"}})
        assert r.status_code == 202, r.text
        tid = r.json()["task_id"]

        async def done() -> dict[str, Any] | None:
            got = await c.get(f"/tasks/{tid}")
            return got.json() if got.status_code == 200 and got.json()["status"] == "DONE" \
                else None

        task = await wait_until(done, timeout=90, what="the task to be DONE over TLS")
        assert task is not None and task["result"] == "over TLS"
        ready = await c.get("/readyz")
        assert ready.status_code == 200, ready.text
    # A CA that did not sign the server's certificate: verify-full refuses it.
    port = free_port()
    await env.api(port, TASKFLOW_DATABASE_SSLROOTCERT=str(pg.dir / "server.crt"))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        ready = await c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["postgres"] == "unavailable"
