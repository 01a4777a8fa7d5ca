"""The FastAPI application: lifespan wiring, middleware and error mapping."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import (
    dashboard,
    login,
    metrics,
    ops,
    problems,
    schedules,
    stream,
    tasks,
    webhooks,
    workflows,
)
from api.audit import router as audit_router
from api.auth import KeyRing
from api.dead_letters import router as dead_letters_router
from api.erasure import router as erasure_router
from api.erasure import sealer
from api.fastpath import FastSubmit
from api.feed import ChangeFeed
from api.limits import RequestGuard
from events import __version__, chain, crypto, keystore
from events.db import DB_ERRORS, database_down, make_engine
from events.errors import LogUnavailable
from events.log import EventProducer
from events.runtime import tune_gc
from events.settings import Settings, get_settings

log = logging.getLogger("taskflow.api")
# Young collections every 10,000 allocations (CPython: 700); a full collection is tried
# every 100 middle ones (CPython: 10). An API process holding thousands of SSE
# subscribers walks all of them in every full collection, a pause its streams all feel.
GC_THRESHOLDS = (10_000, 10, 100)


class _Observe:
    """Request metrics, as plain ASGI.

    ``@app.middleware("http")`` (Starlette's ``BaseHTTPMiddleware``) runs every request in
    a task group with memory streams; on POST /tasks that cost more CPU than the route.
    The duration ends at the response's start, as it did there (an SSE stream is not
    counted for as long as it stays open).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                path = getattr(scope.get("route"), "path", "unmatched")
                metrics.observe_request(scope["method"], path, message["status"],
                                        time.perf_counter() - start)
            await send(message)

        await self.app(scope, receive, observed)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        chain.configure(settings)
        app.state.engine = make_engine(settings.database_url)
        app.state.producer = EventProducer(bootstrap=settings.kafka_bootstrap,
                                           topic=settings.topic,
                                           timeout_s=settings.produce_timeout_s)
        try:
            await app.state.producer.start()
        except LogUnavailable as exc:
            # Start anyway: reads keep working, writes answer 503 until Kafka is back.
            log.warning("kafka unavailable at start-up: %r", exc)
        if settings.encryption_key:  # payloads sealed per task (docs/audit.md)
            app.state.keyring = keystore.Keyring(crypto.master_key(settings.encryption_key),
                                                 app.state.engine)
            app.state.producer.before_append = sealer(app.state.keyring)
        app.state.keys = KeyRing(app.state.engine, rate_per_s=settings.rate_limit_per_s,
                                 burst=settings.rate_limit_burst,
                                 fail_rate_per_s=settings.auth_fail_rate_per_s,
                                 fail_burst=settings.auth_fail_burst)
        if not settings.auth:
            log.warning("TASKFLOW_AUTH is off: the API is open and unscoped (local development)")
        app.state.feed = ChangeFeed(settings.database_url, queue_max=settings.sse_queue_max)
        await app.state.feed.start()
        tune_gc(*GC_THRESHOLDS)
        try:
            yield
        finally:
            await app.state.feed.stop()
            reader = getattr(app.state, "log_reader", None)
            if reader is not None:
                await reader.stop()
            await app.state.producer.stop()
            await app.state.engine.dispose()

    app = FastAPI(
        title="TaskFlow",
        version=__version__,
        summary="Event-sourced tasks: every state change is an event in Kafka.",
        lifespan=lifespan,
    )
    problems.install(app)

    async def _db_error(request: Request, exc: Exception) -> Response:
        # Handled here, inside the app, so that an outage is one 503 per request and not
        # a stack trace in the server log for each.
        if database_down(exc):
            return problems.for_db_down(request, exc)
        log.error("unexpected database error on %s", request.url.path, exc_info=exc)
        return problems.problem_response(500, "Internal error", "an unexpected error occurred",
                                         kind="internal", instance=request.url.path)

    for cls in DB_ERRORS:
        app.add_exception_handler(cls, _db_error)

    app.add_middleware(FastSubmit)  # innermost of these: after the guard, before routing
    app.add_middleware(_Observe)
    # Outermost first: CORS answers preflights; the guard refuses bad bodies before parsing.
    app.add_middleware(RequestGuard, max_body_bytes=settings.max_body_bytes,
                       max_json_depth=settings.max_json_depth,
                       max_json_keys=settings.max_json_keys,
                       max_header_bytes=settings.max_header_bytes)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["Location", "Retry-After"])
    for module in (tasks, stream, ops, schedules, webhooks, login):
        app.include_router(module.router)
    app.include_router(audit_router)
    app.include_router(dead_letters_router)
    app.include_router(erasure_router)
    app.include_router(workflows.router)
    app.include_router(dashboard.router)
    return app
