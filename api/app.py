"""The FastAPI application: lifespan wiring, middleware and error mapping."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request, Response

from api import dashboard, metrics, problems
from api.feed import ChangeFeed
from api.routes import router
from events.db import make_engine
from events.errors import LogUnavailable
from events.log import EventProducer
from events.settings import Settings, get_settings

log = logging.getLogger("taskflow.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.engine = make_engine(settings.database_url)
        app.state.producer = EventProducer(bootstrap=settings.kafka_bootstrap,
                                           topic=settings.topic,
                                           timeout_s=settings.produce_timeout_s)
        try:
            await app.state.producer.start()
        except LogUnavailable as exc:
            # Start anyway: reads keep working, writes answer 503 until Kafka is back.
            log.warning("kafka unavailable at start-up: %r", exc)
        app.state.feed = ChangeFeed(settings.database_url, queue_max=settings.sse_queue_max)
        await app.state.feed.start()
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
        version="0.1.0",
        summary="Event-sourced tasks: every state change is an event in Kafka.",
        lifespan=lifespan,
    )
    problems.install(app)

    @app.middleware("http")
    async def _observe(request: Request,
                       call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.observe_request(request.method, path, response.status_code,
                                time.perf_counter() - start)
        return response

    app.include_router(router)
    app.include_router(dashboard.router)
    return app
