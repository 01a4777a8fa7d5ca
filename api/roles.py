"""Roles of API keys, and the one table of what each route needs.

An API key acts for one tenant with one role: ``admin`` > ``submitter`` > ``reader``.
``authenticate`` (api/auth.py) looks the route of every request up in ``ROUTE_ROLES`` and
answers 403 when the key's role is below it. ``public`` routes take no key at all.

A route missing from the table needs ``admin`` (closed by default), and a test fails for
every registered route that has no row here. docs/security.md carries the same table;
a test checks that they agree.
"""

from __future__ import annotations

from typing import Literal

Role = Literal["admin", "submitter", "reader"]
ROLES: tuple[Role, ...] = ("reader", "submitter", "admin")  # lowest first
PUBLIC = "public"
DEFAULT_ROLE: Role = "submitter"  # what ``taskflow keys create`` gives without --role

# (method, route path template) -> the least role it needs. A plain dict literal: one row
# per route, so that a new route adds one line.
ROUTE_ROLES: dict[tuple[str, str], str] = {
    # Probes, the dashboard page and its files, the API description.
    ("GET", "/healthz"): "public",
    ("GET", "/readyz"): "public",
    ("GET", "/"): "public",
    ("GET", "/static/{name}"): "public",
    ("GET", "/openapi.json"): "public",
    ("GET", "/docs"): "public",
    # Dashboard login: each checks the key or the cookie itself (api/login.py).
    ("POST", "/session"): "public",
    ("GET", "/session"): "public",
    ("DELETE", "/session"): "public",
    ("GET", "/docs/oauth2-redirect"): "public",
    ("GET", "/redoc"): "public",
    # Tasks.
    ("POST", "/tasks"): "submitter",
    ("POST", "/tasks:batch"): "submitter",
    ("GET", "/tasks"): "reader",
    ("GET", "/tasks/{task_id}"): "reader",
    ("GET", "/tasks/{task_id}/events"): "reader",
    ("GET", "/tasks/{task_id}/stream"): "reader",
    ("GET", "/tasks/{task_id}/audit"): "reader",
    ("POST", "/tasks/{task_id}/cancel"): "submitter",
    ("POST", "/tasks/{task_id}/retry"): "submitter",
    ("DELETE", "/tasks/{task_id}/data"): "admin",
    ("GET", "/handlers"): "reader",
    ("GET", "/events"): "reader",
    # Dead-lettered tasks: redriving many at once is an operator's act.
    ("GET", "/dead-letters"): "reader",
    ("POST", "/dead-letters:redrive"): "admin",
    # Operations.
    ("GET", "/stats"): "reader",
    ("GET", "/metrics"): "admin",
    # Schedules.
    ("POST", "/schedules"): "submitter",
    ("GET", "/schedules"): "reader",
    ("GET", "/schedules/{schedule_id}"): "reader",
    ("GET", "/schedules/{schedule_id}/events"): "reader",
    ("PATCH", "/schedules/{schedule_id}"): "submitter",
    ("DELETE", "/schedules/{schedule_id}"): "submitter",
    ("POST", "/schedules/{schedule_id}:pause"): "submitter",
    ("POST", "/schedules/{schedule_id}:resume"): "submitter",
    ("POST", "/schedules/{schedule_id}:trigger"): "submitter",
    ("GET", "/schedules/{schedule_id}/runs"): "reader",
    # Webhooks.
    ("POST", "/webhooks"): "submitter",
    ("GET", "/webhooks"): "reader",
    ("GET", "/webhooks/{webhook_id}"): "reader",
    ("GET", "/webhooks/{webhook_id}/events"): "reader",
    ("DELETE", "/webhooks/{webhook_id}"): "submitter",
    ("POST", "/webhooks/{webhook_id}:rotate-secret"): "submitter",
    ("GET", "/webhooks/{webhook_id}/deliveries"): "reader",
    ("POST", "/webhooks/{webhook_id}/deliveries/{delivery_id}:redeliver"): "submitter",
    # Workflows.
    ("POST", "/workflows"): "submitter",
    ("GET", "/workflows"): "reader",
    ("GET", "/workflows/{workflow_id}"): "reader",
    ("POST", "/workflows/{workflow_id}/cancel"): "submitter",
    ("POST", "/workflows/{workflow_id}/retry"): "submitter",
    ("GET", "/workflows/{workflow_id}/stream"): "reader",
    ("GET", "/ui/workflows/{workflow_id}"): "public",  # the page; its data needs a key
}


def required(method: str, path: str) -> str:
    """The role a route needs; ``admin`` for one the table does not know."""
    return ROUTE_ROLES.get(("GET" if method == "HEAD" else method, path), "admin")


def allows(role: str, needed: str) -> bool:
    """Whether ``role`` is at least ``needed``."""
    order: tuple[str, ...] = ROLES
    if needed == PUBLIC:
        return True
    return role in order and order.index(role) >= order.index(needed)
