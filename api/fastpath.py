"""``POST /tasks`` without an ``Idempotency-Key``, the busiest request, as plain ASGI.

With single POSTs end to end the API is the largest user of the machine's CPU, and most
of a submit's CPU went to the layers between uvicorn and the route: FastAPI's exception
and exit-stack middlewares, routing, the request-response wrapper and dependency solving.
This sits just inside ``RequestGuard``, which has already read the body, enforced the
body limit, the media type and the JSON depth, and handed the body on in the scope
(``BODY_KEY``). It answers the common case itself: a body that is a valid ``TaskIn``,
with no ``Idempotency-Key``. It calls the same functions as the route (``_tenant``,
``_check_type``, ``_created``, ``_accepted``) and renders errors with the same
problem+json handlers.

Everything else goes to the app unchanged, the guard's replay of the body still unread:
other paths and methods, keyed submits, and bodies ``TaskIn`` refuses, so every
validation error still comes from FastAPI's own route and reads exactly as it did. The
route stays registered, so the OpenAPI document is unchanged too.
"""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from api import metrics, problems
from api.auth import _tenant
from api.limits import BODY_KEY
from api.routes import LOG_DOWN_NOTE, _accepted, _check_type, _created, router
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
        body = scope.get(BODY_KEY)  # read, size-checked and still unconsumed by the guard
        if (body is None or scope["path"] != PATH or scope["method"] != "POST"
                or any(k == b"idempotency-key" for k, _ in scope["headers"])):
            await self.app(scope, receive, send)
            return
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
            # The append may still land: the id lets the client check, as the route does.
            await problems.for_log_down(request, exc, task_id=str(task_id), note=LOG_DOWN_NOTE
                                        )(scope, receive, send)
            return
        metrics.SUBMITTED.labels(task.type).inc()
        await _accepted(task_id, p)(scope, receive, send)

