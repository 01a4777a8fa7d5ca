"""Built-in outbound handlers: ``http`` (one HTTP request) and ``email`` (one message
over SMTP). Both go through the SSRF guard of ``events.outbound``.

``http`` payload::

    {"method": "POST", "url": "https://example.com/x", "headers": {...},
     "body": "text" | {json}, "expected_status": 200 | [200, 201], "timeout_s": 10}

Its result is ``{"status", "headers", "body", "truncated"}``, the body cut to
``BODY_EXCERPT`` bytes. A 5xx, a timeout or a connection error fails the attempt and is
retried; any other status that is not expected (a 4xx, say) fails the task at once.

``email`` payload::

    {"to": "a@example.com" | [...], "subject": "...", "body": "...", "from": "...",
     "cc": [...], "reply_to": "..."}

sent through ``TASKFLOW_SMTP_HOST``/``_PORT`` with STARTTLS whenever the server offers
it (``TASKFLOW_SMTP_STARTTLS=require`` refuses servers that do not), and a login when
``TASKFLOW_SMTP_USERNAME`` is set. A permanent SMTP refusal (5xx) fails the task; a
temporary one (4xx) or a connection error is retried.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import make_msgid
from functools import lru_cache
from typing import Any, Final, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from events.outbound import OutboundRefused, outbound_settings, pin
from worker.handlers import HandlerError, TaskContext, handler

BODY_EXCERPT: Final = 4096  # bytes of a response body kept in the result


class HttpTask(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    url: str = Field(min_length=1, max_length=2048)
    headers: dict[str, str] = Field(default_factory=dict)
    body: str | dict[str, Any] | list[Any] | None = None
    expected_status: int | list[int] | None = None  # default: any 2xx
    timeout_s: float = Field(default=10.0, gt=0, le=300)


def _parse(model: type[BaseModel], payload: dict[str, Any]) -> Any:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise HandlerError(f"invalid payload: {exc.errors(include_url=False)}") from None


class OutboundTimeout(RuntimeError):
    """The target did not answer within the request's ``timeout_s``. It is not a
    ``TimeoutError``, which the worker reads as the task's own timeout: the attempt fails
    with reason ``error`` and is retried like any transient failure."""


def _expected(spec: int | list[int] | None, code: int) -> bool:
    if spec is None:
        return 200 <= code < 300
    return code in (spec if isinstance(spec, list) else [spec])


@handler("http")
async def http(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """One HTTP request; see the module docstring."""
    task: HttpTask = _parse(HttpTask, payload)
    o = outbound_settings()
    try:
        pinned = await pin(task.url, o.allowed())
    except OutboundRefused as exc:
        raise HandlerError(f"target refused: {exc.reason}") from None
    headers = {**task.headers, **pinned.headers}
    kwargs: dict[str, Any] = {}
    if isinstance(task.body, str):
        kwargs["content"] = task.body.encode()
    elif task.body is not None:
        kwargs["json"] = task.body
    timeout = httpx.Timeout(task.timeout_s, connect=min(task.timeout_s,
                                                         o.outbound_connect_timeout_s))
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False,
                                     trust_env=False) as client, \
                client.stream(task.method, pinned.url, headers=headers,
                              extensions=pinned.extensions, **kwargs) as resp:
            excerpt = bytearray()
            truncated = False
            async for chunk in resp.aiter_bytes():
                excerpt += chunk
                if len(excerpt) > BODY_EXCERPT:
                    truncated = True
                    del excerpt[BODY_EXCERPT:]
                    break
            code = resp.status_code
            got_headers = {k: v for k, v in resp.headers.items()}
    except httpx.TimeoutException as exc:  # the request's own timeout, not the task's
        raise OutboundTimeout(f"{task.method} {task.url}: {type(exc).__name__} after "
                              f"{task.timeout_s:g}s") from None
    except httpx.HTTPError as exc:
        raise RuntimeError(f"{task.method} {task.url}: {type(exc).__name__}: {exc}") from None
    result = {"status": code, "headers": got_headers,
              "body": excerpt.decode("utf-8", errors="replace").replace("\x00", "\ufffd"),
              "truncated": truncated}
    if _expected(task.expected_status, code):
        return result
    if code >= 500:
        raise RuntimeError(f"{task.method} {task.url}: HTTP {code}")  # retried
    raise HandlerError(f"{task.method} {task.url}: HTTP {code}, expected "
                       f"{task.expected_status or '2xx'}")


class SmtpSettings(BaseSettings):
    """``TASKFLOW_SMTP_*``: the mail server the ``email`` handler sends through."""

    model_config = SettingsConfigDict(env_prefix="TASKFLOW_SMTP_", frozen=True,
                                      extra="ignore")

    host: str = "127.0.0.1"
    port: int = 25
    username: str = ""
    password: str = ""
    sender: str = Field(default="taskflow@localhost", alias="TASKFLOW_SMTP_FROM")
    starttls: Literal["auto", "require", "off"] = "auto"  # auto: when the server offers it
    ca_file: str = ""  # CA bundle for the server's certificate (default: the system's)
    timeout_s: float = Field(default=30.0, gt=0)


@lru_cache(maxsize=1)
def smtp_settings() -> SmtpSettings:
    return SmtpSettings()


class EmailTask(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    to: str | list[str] = Field(min_length=1)
    subject: str = Field(max_length=998)
    body: str = ""
    sender: str | None = Field(default=None, alias="from")
    cc: list[str] = Field(default_factory=list)
    reply_to: str | None = None


def _send(msg: EmailMessage, s: SmtpSettings) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=s.ca_file or None)
    with smtplib.SMTP(s.host, s.port, timeout=s.timeout_s) as smtp:
        smtp.ehlo()
        tls = False
        if s.starttls != "off" and smtp.has_extn("starttls"):
            smtp.starttls(context=context)
            smtp.ehlo()
            tls = True
        elif s.starttls == "require":
            raise HandlerError("the SMTP server does not offer STARTTLS")
        if s.username:
            smtp.login(s.username, s.password)
        refused = smtp.send_message(msg)
    return {"message_id": msg["Message-ID"], "refused": sorted(refused), "starttls": tls}


@handler("email")
def email(payload: dict[str, Any], ctx: TaskContext) -> Any:
    """One message over SMTP; see the module docstring. Runs in a thread."""
    task: EmailTask = _parse(EmailTask, payload)
    s = smtp_settings()
    msg = EmailMessage()
    msg["From"] = task.sender or s.sender
    msg["To"] = ", ".join(task.to if isinstance(task.to, list) else [task.to])
    if task.cc:
        msg["Cc"] = ", ".join(task.cc)
    if task.reply_to:
        msg["Reply-To"] = task.reply_to
    msg["Subject"] = task.subject
    msg["Message-ID"] = make_msgid(domain="taskflow")
    msg["X-TaskFlow-Task"] = ctx.task_id
    msg.set_content(task.body)
    try:
        return _send(msg, s)
    except smtplib.SMTPResponseException as exc:
        if 500 <= exc.smtp_code < 600:
            raise HandlerError(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}") from None
        raise RuntimeError(f"SMTP {exc.smtp_code}: {exc.smtp_error!r}") from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise HandlerError(f"every recipient refused: {sorted(exc.recipients)}") from None
