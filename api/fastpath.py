"""``POST /tasks`` without an ``Idempotency-Key``, the busiest request, as plain ASGI.

With single POSTs end to end the API is the largest user of the machine's CPU, and most
of a submit's CPU went to the layers between uvicorn and the route: FastAPI's exception
and exit-stack middlewares, routing, the request-response wrapper and dependency solving.
This sits just inside ``RequestGuard``, which has already read the body, enforced the
body limit, the media type and the JSON depth, and handed the body on in the scope
(``BODY_KEY``). It answers the common case itself: a body that is a valid ``TaskIn``,
with no ``Idempotency-Key``. It authenticates as the route's dependency does
(``authenticate``), calls the same submit core (``api.submit.accept_task``) and renders
errors with the same problem+json handlers.

Everything else goes to the app unchanged, the guard's replay of the body still unread:
other paths and methods, keyed submits, and bodies ``TaskIn`` refuses, so every
validation error still comes from FastAPI's own route and reads exactly as it did. The
route stays registered, so the OpenAPI document is unchanged too.
"""

from __future__ import annotations

from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from api import problems
from api.auth import authenticate
from api.limits import BODY_KEY, DOC_KEY
from api.schemas import TaskIn
from api.submit import accept_task
from api.tasks import router
from events.db import DB_ERRORS, database_down

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
            doc = scope.get(DOC_KEY)
            # The body as the guard parsed and checked it: validating it costs next to
            # nothing, where parsing the JSON again would cost as much as the guard.
            task = (TaskIn.model_validate(doc) if isinstance(doc, dict)
                    else TaskIn.model_validate_json(body))
        except ValidationError:
            await self.app(scope, receive, send)
            return
        scope["route"] = self._route  # as routing would set it
        request = Request(scope, receive)
        try:
            tenant = await authenticate(request)
            response = await accept_task(request, task, tenant)
        except problems.Problem as exc:
            response = problems.for_problem(request, exc)
        except DB_ERRORS as exc:
            # Looking up the key or the rate-limit bucket: a 503, as the app answers it.
            if not database_down(exc):
                raise
            response = problems.for_db_down(request, exc)
        await response(scope, receive, send)
