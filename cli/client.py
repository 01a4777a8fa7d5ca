"""``taskflow submit`` and ``taskflow watch``: the API from the command line, through the
Python SDK (``taskflow_client``). Each prints JSON lines on stdout; an error answer is
printed as its problem on stderr, with exit status 1."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, cast

import orjson
import typer
from taskflow_client import Change, Priority, ProblemError, TaskFlow, TaskFlowError, TaskHandle
from taskflow_client.models import PRIORITIES, PriorityName

# Exit statuses of ``submit --wait``: the task ended FAILED or CANCELLED, not DONE.
EXIT_NOT_DONE = 3


def _print(doc: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(doc, default=str).decode() + "\n")
    sys.stdout.flush()


def _fail(exc: TaskFlowError) -> int:
    doc = exc.problem if isinstance(exc, ProblemError) else {"error": str(exc)}
    sys.stderr.write(orjson.dumps(doc).decode() + "\n")
    return 1


def priority_arg(text: str | None) -> Priority | None:
    """``--priority``: a number (the API checks its range) or a level name."""
    if text is None:
        return None
    name = text.strip().lower()
    if name in PRIORITIES:
        return cast(PriorityName, name)
    try:
        return int(name)
    except ValueError:
        raise typer.BadParameter(f"an integer or one of {', '.join(PRIORITIES)}",
                                 param_hint="--priority") from None


def handle_json(h: TaskHandle) -> dict[str, Any]:
    return {"task_id": h.task_id, "status": h.status,
            "position": {"partition": h.position.partition, "offset": h.position.offset}}


def submit(url: str, api_key: str | None, *, title: str, type_: str,
           payload: dict[str, Any], priority: Priority | None, idempotency_key: str | None,
           delay_s: float | None, run_at: str | None, wait: bool,
           timeout: float | None) -> int:
    """Submit one task; print its handle, and with ``wait`` its final state."""
    with TaskFlow(url, api_key, batch=False) as tf:
        try:
            h = tf.submit(title, type=type_, payload=payload, priority=priority,
                          idempotency_key=idempotency_key, delay_s=delay_s, run_at=run_at)
            _print(handle_json(h))
            if not wait:
                return 0
            task = tf.wait(h.id, timeout=timeout)
        except TaskFlowError as exc:
            return _fail(exc)
        _print({"task_id": task.task_id, "status": task.status, "result": task.result,
                "error": task.error, "attempt": task.attempt,
                "finished_at": task.finished_at})
        return 0 if task.status == "DONE" else EXIT_NOT_DONE


def watch(url: str, api_key: str | None, *, status: Iterable[str] | None,
          task_id: Iterable[str] | None, after: int | None, count: int | None) -> int:
    """Print each change as it happens (``count`` of them, or until interrupted)."""
    seen = 0
    with TaskFlow(url, api_key) as tf:
        try:
            changes = tf.stream(status=list(status or ()) or None,
                                task_id=list(task_id or ()) or None, after=after)
            for c in changes:
                _print(change_json(c))
                seen += 1
                if count is not None and seen >= count:
                    break
        except TaskFlowError as exc:
            return _fail(exc)
        except KeyboardInterrupt:
            pass
    return 0


def change_json(c: Change) -> dict[str, Any]:
    return {"position": c.position, "event": c.event, **c.data}
