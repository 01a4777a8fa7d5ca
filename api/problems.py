"""RFC 9457 problem details: the only shape an error leaves the API in.

    Problem                      an HTTP-facing error with status, title and detail
    ├── BadRequest               400
    ├── Forbidden                403 (a role below the route's, or a cross-origin or unproven
    │                                 cookie-authenticated write)
    ├── NotFound                 404
    ├── Conflict                 409
    └── Unavailable              503 (the log did not acknowledge)
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from events.db import database_down
from events.errors import LogUnavailable

PROBLEM = "application/problem+json"
BASE = "https://taskflow.dev/problems/"


class Problem(Exception):
    status = 400
    title = "Bad request"
    kind = "bad-request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, detail={self.detail!r})"


class BadRequest(Problem):
    pass


class Forbidden(Problem):
    status, title, kind = 403, "Forbidden", "forbidden"


class NotFound(Problem):
    status, title, kind = 404, "Not found", "not-found"


class Conflict(Problem):
    status, title, kind = 409, "Conflict", "conflict"


class Invalid(Problem):
    status, title, kind = 422, "Unprocessable content", "validation"


class Unavailable(Problem):
    status, title, kind = 503, "Service unavailable", "unavailable"


# What each problem status means where a route documents it (OpenAPI ``responses``).
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"description": desc, "content": {PROBLEM: {}}}
    for code, desc in [(400, "Bad request"), (401, "Missing or invalid API key"),
                       (403, "The key's role is too low for the route, or a cross-origin "
                             "or cookie-authenticated write without its X-CSRF-Token"),
                       (404, "No such task"), (409, "Not allowed in the task's state"),
                       (413, "Body too large"), (415, "Body is not JSON"),
                       (422, "Invalid input"), (429, "Rate limit exceeded"),
                       (503, "The event log did not acknowledge")]
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route that answers these problem statuses."""
    return {k: v for k, v in ERRORS.items() if k in statuses}


def problem_response(status: int, title: str, detail: str, *, kind: str, instance: str,
                     headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {"type": BASE + kind, "title": title, "status": status, "detail": detail,
            "instance": instance, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


_TITLES = {400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
           405: "Method not allowed", 406: "Not acceptable", 409: "Conflict",
           413: "Content too large", 415: "Unsupported media type", 422: "Unprocessable content",
           429: "Too many requests", 503: "Service unavailable"}


def for_problem(request: Request, exc: Problem) -> JSONResponse:
    headers = ({"Retry-After": str(exc.extra["retry_after"])}
               if "retry_after" in exc.extra else None)
    return problem_response(exc.status, exc.title, exc.detail, kind=exc.kind,
                            instance=request.url.path, headers=headers, **exc.extra)


def for_log_down(request: Request, exc: LogUnavailable, **extra: Any) -> JSONResponse:
    """503 for a write the log did not acknowledge. ``extra`` carries what the write may
    still have created (``task_id``, ``task_ids``), so that a retry can be made safe."""
    return problem_response(503, "Service unavailable",
                            f"the event log did not acknowledge the write: {exc.reason}",
                            kind="log-unavailable", instance=request.url.path,
                            headers={"Retry-After": "5"}, **extra)


def for_db_down(request: Request, exc: BaseException) -> JSONResponse:
    """503 for a request that needed Postgres while it was away (restarting, stopped)."""
    return problem_response(503, "Service unavailable",
                            "the database is unavailable; retry shortly",
                            kind="database-unavailable", instance=request.url.path,
                            headers={"Retry-After": "5"})


def install(app: FastAPI) -> None:
    """Map every error, including FastAPI's own, to problem+json."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return for_problem(request, exc)

    @app.exception_handler(LogUnavailable)
    async def _log_down(request: Request, exc: LogUnavailable) -> JSONResponse:
        return for_log_down(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
             "msg": e.get("msg", ""),
             "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return problem_response(422, "Unprocessable content", "the request is not valid",
                                kind="validation", instance=request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = _TITLES.get(exc.status_code, "Error")
        detail = exc.detail if isinstance(exc.detail, str) else title
        return problem_response(exc.status_code, title, detail,
                                kind=title.lower().replace(" ", "-"), instance=request.url.path,
                                headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if database_down(exc):  # raised outside the routes (a middleware's read)
            return for_db_down(request, exc)
        # Last resort: no stack trace leaves the process; it is in the server log.
        return problem_response(500, "Internal error", "an unexpected error occurred",
                                kind="internal", instance=request.url.path)
