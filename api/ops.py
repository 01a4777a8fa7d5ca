"""Operations routes: liveness, readiness, Prometheus metrics and ``/stats``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from api import metrics
from api.auth import TenantDep
from api.deps import DbDep, SettingsDep
from api.logstate import log_ends
from api.problems import Unavailable, documented
from events import constants, queries, retention_db
from events.db import current_revision, migration_head
from events.errors import LogUnavailable
from events.log import ping as kafka_ping
from events.retry import describe
from events.settings import Settings

router = APIRouter()
log = logging.getLogger("taskflow.api")


# The log's end offsets, for lag: asking Kafka costs more than the rest of /stats, so the
# answer is kept and refreshed in the background. A request waits for Kafka only when no
# answer is younger than LOG_ENDS_STALE_S.
LOG_ENDS_FRESH_S = 1.0
LOG_ENDS_STALE_S = 15.0


async def _refresh_log_ends(app: Any, settings: Settings) -> dict[int, int]:
    asked = time.monotonic()
    ends = await log_ends(app, settings)
    app.state.log_ends_cached = (asked, ends)
    return ends


async def _log_ends(request: Request, settings: Settings) -> dict[int, int]:
    """End offset per partition, at most ``LOG_ENDS_FRESH_S`` old while Kafka answers;
    one refresh at a time per process, however many requests ask."""
    state = request.app.state
    cached: tuple[float, dict[int, int]] | None = getattr(state, "log_ends_cached", None)
    age = time.monotonic() - cached[0] if cached is not None else None
    if cached is not None and age is not None and age < LOG_ENDS_FRESH_S:
        return cached[1]
    task: asyncio.Task[dict[int, int]] | None = getattr(state, "log_ends_task", None)
    if task is None or task.done():
        task = state.log_ends_task = asyncio.ensure_future(
            _refresh_log_ends(request.app, settings))
        # Retrieved here so that a failed refresh nobody awaited is not reported as lost.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
    if cached is not None and age is not None and age < LOG_ENDS_STALE_S:
        return cached[1]
    return await asyncio.shield(task)


async def projector_lag(request: Request, settings: Settings, db: DbDep) -> dict[int, int]:
    """Events in the log not yet applied by the live projection, per partition."""
    ends = await _log_ends(request, settings)
    cps = await queries.checkpoints(db, projection=settings.projection, topic=settings.topic)
    lag = {p: max(0, end - cps.get(p, 0)) for p, end in ends.items()}
    for p, n in lag.items():
        metrics.PROJECTOR_LAG.labels(str(p)).set(n)
    return lag


_ANY_TENANT = object()  # open_counts: no tenant filter

@router.get("/stats", tags=["ops"])
async def stats(request: Request, db: DbDep, settings: SettingsDep, tenant: TenantDep,
                minutes: Annotated[int, Query(ge=1, le=1440)] = 15) -> dict[str, Any]:
    """Counts by status, tasks finished per minute, and ``open``: unfinished tasks by
    priority and by tenant, all in the caller's scope. For an ``admin`` also the internals
    of the whole system: projector lag per partition, and retention: how many finished
    tasks left the read model, up to which cutoff."""
    name = tenant.name if tenant.scoped else None
    out: dict[str, Any] = {
        "counts": await queries.status_counts(db, tenant=name),
        "throughput": await queries.throughput(db, minutes=minutes, tenant=name),
        "open": await queries.open_counts(db, tenant=name if tenant.scoped else _ANY_TENANT)}
    if tenant.role != "admin":
        return out
    try:
        lag: dict[int, int] | None = await projector_lag(request, settings, db)
    except LogUnavailable:
        lag = None
    return {**out, "lag": {str(p): n for p, n in lag.items()} if lag is not None else None,
            "retention": await retention_db.status(db, projection=settings.projection,
                                                   days=settings.retention_days)}


@router.get("/healthz", tags=["ops"])
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"], responses=documented(503))
async def readyz(db: DbDep, settings: SettingsDep) -> dict[str, Any]:
    """Readiness: Kafka and Postgres reachable, migrations at head.

    Both probes run side by side, each bounded by ``READY_PROBE_TIMEOUT_S``, so a stalled
    dependency gets a 503 naming it within seconds instead of a request that hangs. The
    answer says which dependency is down, never how: the error, with its addresses and
    driver text, goes to the server log only.
    """
    limit = constants.READY_PROBE_TIMEOUT_S

    async def kafka() -> dict[str, str]:
        try:
            async with asyncio.timeout(limit):
                await kafka_ping(settings.kafka_bootstrap, timeout_s=limit / 2)
        except (LogUnavailable, TimeoutError) as exc:
            log.warning("readyz: kafka unavailable: %s", describe(exc))
            return {"kafka": "unavailable"}
        return {"kafka": "ok"}

    async def postgres() -> dict[str, str]:
        try:
            async with asyncio.timeout(limit):
                await queries.ping(db)
                rev, head = await current_revision(db), migration_head()
        except Exception as exc:
            log.warning("readyz: postgres unavailable: %s", describe(exc))
            return {"postgres": "unavailable"}
        if rev != head:
            log.warning("readyz: migrations at %s, head is %s", rev, head)
        return {"postgres": "ok", "migrations": "ok" if rev == head else "behind"}

    checks: dict[str, str] = {}
    for part in await asyncio.gather(kafka(), postgres()):
        checks.update(part)
    down = [f"{k} {v}" for k, v in checks.items() if v != "ok"]
    if down:
        raise Unavailable("not ready: " + "; ".join(down), checks=checks, retry_after=5)
    return {"status": "ready", "checks": checks}


@router.get("/metrics", tags=["ops"], response_class=Response,
            responses=documented(401, 403))
async def prometheus(request: Request, db: DbDep, settings: SettingsDep,
                     tenant: TenantDep) -> Response:
    """Prometheus text format: every tenant's figures, so an ``admin`` key is needed with
    auth on."""
    with contextlib.suppress(LogUnavailable):
        await projector_lag(request, settings, db)
    for (projection, reason), n in (await queries.parked_counts(db)).items():
        metrics.PARKED.labels(projection, reason).set(n)
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
