"""What a call can raise: one tree, the API's problem+json (RFC 9457) made typed.

    TaskFlowError                 every error of this package
    ├── TransportError            no HTTP answer: connection refused or reset, timeout
    └── ProblemError              the API answered a problem (status, type, title, detail …)
        ├── BadRequest            400, 413, 415 and other 4xx
        │   ├── ValidationError   422: ``errors`` says where
        │   ├── Unauthorized      401, 403
        │   ├── NotFound          404
        │   ├── Conflict          409: e.g. cancel of a finished task
        │   └── RateLimited       429: ``retry_after`` seconds
        └── ServerError           500 and other 5xx
            └── Unavailable       502, 503, 504: ``retry_after`` seconds
"""

from __future__ import annotations

import json
from typing import Any


class TaskFlowError(Exception):
    """The base of every error this package raises."""


class TransportError(TaskFlowError):
    """No HTTP answer: the connection failed or the request timed out."""

    def __init__(self, message: str, *, method: str = "", url: str = "",
                 connect_failed: bool = False) -> None:
        super().__init__(message)
        self.method = method
        self.url = url
        # True when no connection was made: nothing was sent, any request can be retried.
        self.connect_failed = connect_failed

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r}, method={self.method!r}, url={self.url!r})"


class ProblemError(TaskFlowError):
    """An answer of problem+json; its members, the standard ones and the extensions.

    :param status: the HTTP status.
    :param problem: the decoded problem document (``type``, ``title``, ``detail``, …).
    :param retry_after: the ``Retry-After`` header in seconds, if the API sent one.
    """

    def __init__(self, status: int, problem: dict[str, Any], *,
                 retry_after: float | None = None) -> None:
        self.status = status
        self.problem = problem
        self.type: str = str(problem.get("type", "about:blank"))
        self.title: str = str(problem.get("title", ""))
        self.detail: str = str(problem.get("detail", ""))
        self.instance: str | None = problem.get("instance")
        self.retry_after = retry_after
        super().__init__(f"{status} {self.title}: {self.detail}" if self.detail
                         else f"{status} {self.title}")

    @property
    def extra(self) -> dict[str, Any]:
        """The problem's extension members (``errors``, ``task_id``, ``task_ids`` …)."""
        return {k: v for k, v in self.problem.items()
                if k not in ("type", "title", "status", "detail", "instance")}

    def __getattr__(self, name: str) -> Any:
        # Extension members read as attributes: ``exc.task_id``, ``exc.errors``.
        problem = self.__dict__.get("problem", {})
        if name in problem:
            return problem[name]
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, detail={self.detail!r})"


class BadRequest(ProblemError):
    pass


class ValidationError(BadRequest):
    """422: the input is not valid; ``errors`` is a list of ``{loc, msg, type}``."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        errs = self.problem.get("errors")
        return list(errs) if isinstance(errs, list) else []


class Unauthorized(BadRequest):
    pass


class NotFound(BadRequest):
    pass


class Conflict(BadRequest):
    pass


class RateLimited(BadRequest):
    pass


class ServerError(ProblemError):
    pass


class Unavailable(ServerError):
    pass


_BY_STATUS: dict[int, type[ProblemError]] = {
    401: Unauthorized, 403: Unauthorized, 404: NotFound, 409: Conflict, 422: ValidationError,
    429: RateLimited, 502: Unavailable, 503: Unavailable, 504: Unavailable,
}


def problem_error(status: int, body: bytes, retry_after: float | None = None) -> ProblemError:
    """The typed exception of an error answer (problem+json, or any other body)."""
    try:
        doc = json.loads(body) if body else {}
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    if "title" not in doc:
        doc = {"type": "about:blank", "title": f"HTTP {status}", "status": status,
               "detail": body[:500].decode("utf-8", "replace"), **doc}
    return from_problem(status, doc, retry_after)


def from_problem(status: int, doc: dict[str, Any],
                 retry_after: float | None = None) -> ProblemError:
    """The typed exception of a decoded problem document."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else BadRequest
    return cls(status, doc, retry_after=retry_after)
