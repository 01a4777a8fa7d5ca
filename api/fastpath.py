"""``POST /tasks`` without an ``Idempotency-Key``, the busiest request, as plain ASGI.

With single POSTs end to end the API is the largest user of the machine's CPU, and most
of a submit's CPU went to the layers between uvicorn and the route: FastAPI's exception
and exit-stack middlewares, routing, the request-response wrapper and dependency solving.
This sits just inside ``RequestGuard`` (which has already enforced the body limit, the
media type and the JSON depth) and answers the common case itself: a body that is a valid
``TaskIn``, with no ``Idempotency-Key``. It calls the same functions as the route
(``_tenant``, ``_check_type``, ``_created``, ``_accepted``) and renders errors with the
same problem+json handlers.

Everything else goes to the app unchanged, the body replayed: other paths and methods,
keyed submits, and bodies ``TaskIn`` refuses, so every validation error still comes from
FastAPI's own route and reads exactly as it did. The route stays registered, so the
OpenAPI document is unchanged too.
"""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import metrics, problems
from api.auth import _tenant
from api.routes import _accepted, _check_type, _created, router
from api.schemas import TaskIn
from events import ids
from events.errors import LogUnavailable

PATH = "/tasks"


class FastSubmit:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The route this stands in for; its path labels the request metric.
        self._route = next(r for r in router.routes if getattr(r, "path", None) == PATH
                           and "POST" in getattr(r, "methods", ()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST"
                or any(k == b"idempotency-key" for k, _ in scope["headers"])):
            await self.app(scope, receive, send)
            return
        body, receive = await _read_body(receive)
        try:
            task = TaskIn.model_validate_json(body)
        except ValidationError:
            await self.app(scope, receive, send)
            return
        app = scope["app"]
        scope["route"] = self._route  # as routing would set it
        request = Request(scope, receive)
        state = app.state
        try:
            tenant = await _tenant(request)
            _check_type(task, state.settings, ["body"])
            task_id = ids.uuid4()
            [p] = await state.producer.append([_created(task, task_id, tenant)])
        except problems.Problem as exc:
            await problems.for_problem(request, exc)(scope, receive, send)
            return
        except LogUnavailable as exc:
            await problems.for_log_down(request, exc)(scope, receive, send)
            return
        metrics.SUBMITTED.labels(task.type).inc()
        await _accepted(task_id, p)(scope, receive, send)


async def _read_body(receive: Receive) -> tuple[bytes, Receive]:
    """The whole body, and a ``receive`` that hands it on again before anything else."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"", _replay(None, message, receive)
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    return body, _replay(body, None, receive)


def _replay(body: bytes | None, other: Message | None, receive: Receive) -> Receive:
    pending: Message | None = (other if body is None
                               else {"type": "http.request", "body": body, "more_body": False})

    async def replay() -> Message:
        nonlocal pending
        if pending is not None:
            message, pending = pending, None
            return message
        return await receive()

    return replay
