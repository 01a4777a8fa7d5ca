"""``taskflow schedules``: manage schedules through the HTTP API (so tenancy, validation
and the log write are the API's own)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any

from events.settings import Settings

TIMEOUT_S = 30.0  # seconds a CLI request may take


class ApiError(Exception):
    """The API answered with a problem (``status``, ``detail``)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.detail!r})"


def base_url(settings: Settings, url: str | None) -> str:
    return (url or os.environ.get("TASKFLOW_API_URL")
            or f"http://{settings.api_host}:{settings.api_port}").rstrip("/")


def call(base: str, method: str, path: str, body: dict[str, Any] | None = None,
         key: str | None = None) -> Any:
    """One request; the decoded JSON answer (None for 204), or ``ApiError``."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data is not None else {}
    key = key or os.environ.get("TASKFLOW_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace")
        try:
            doc = json.loads(text)
            detail = doc.get("detail", text)
            errors = doc.get("errors")
            if errors:
                detail += " " + json.dumps(errors)
        except ValueError:
            detail = text
        raise ApiError(exc.code, detail) from None
    return json.loads(raw) if raw else None
