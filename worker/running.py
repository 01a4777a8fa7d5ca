"""From record to terminal event: fold each record into its lane, run the tasks that
become runnable, and stage what happened.

Nothing starts while a lane is recovering (see ``worker.service``): records are folded,
and ``Worker`` schedules what is still open once recovery is done. A task is resolved,
which releases its trigger offset, only together with the events that end it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, cast

from events import constants, crypto, jsonsafe
from events.codec import decode, scrub_nul
from events.errors import UndecodableEvent
from events.fold import TaskState, apply
from events.log import RawMessage, Record, dead_letter_topic
from events.models import (
    EventType,
    FailureReason,
    TaskCancelled,
    TaskCreated,
    TaskDeadLettered,
    TaskDone,
    TaskFailed,
    TaskProcessing,
    TaskRetryScheduled,
)
from events.retry import backoff
from worker import metrics as wmetrics
from worker.handlers import REGISTRY, AsyncHandler, HandlerError
from worker.lane import Lane, TaskCtx
from worker.results import storable

if TYPE_CHECKING:
    from worker.service import Worker

log = logging.getLogger("taskflow.worker")

_TRIGGERS = frozenset({EventType.CREATED, EventType.RETRY_SCHEDULED, EventType.REDRIVEN})
FINISHED_MEMORY = 100_000  # finished task ids a lane remembers


def _park(worker: Worker, lane: Lane, r: Record, error: str) -> None:
    """Send ``r`` to the dead-letter topic with its coordinates and ``error``.

    The value is cut to ``DLT_VALUE_MAX`` bytes: a record near the broker's size limit
    plus these headers would not fit, and the lane would fail on it again and again.
    The whole record stays in the log at the coordinates the headers give.
    """
    worker.parked += 1
    value = r.value
    headers = [
        (constants.HEADER_DLT_TOPIC, r.topic.encode()),
        (constants.HEADER_DLT_PARTITION, str(r.partition).encode()),
        (constants.HEADER_DLT_OFFSET, str(r.offset).encode()),
        (constants.HEADER_DLT_ERROR, scrub_nul(error).encode("utf-8", "replace")[:4000]),
    ]
    if value is not None and len(value) > constants.DLT_VALUE_MAX:
        headers.append((constants.HEADER_DLT_TRUNCATED, str(len(value)).encode()))
        value = value[:constants.DLT_VALUE_MAX]
    lane.raw.append(RawMessage(topic=dead_letter_topic(worker.settings.topic), key=r.key,
                               value=value, headers=tuple(headers)))
    lane.dirty.set()


def on_record(worker: Worker, lane: Lane, r: Record) -> None:
    if r.offset < lane.position:
        # Redelivery (a seek during a rebalance can re-fetch records the lane has
        # already folded): folding a task.created again would re-open a finished task.
        worker.redelivered += 1
        return
    lane.position = r.offset + 1
    try:
        ev = decode(r.value)
    except UndecodableEvent as exc:
        _park(worker, lane, r, exc.error)
        return
    if ev.type is EventType.CREATED:
        # A task.created that did not come through the API's edge (another producer,
        # an older release) may hold a value the read model cannot store; the projector
        # parks it, so running it would finish a task nobody can see.
        data = cast(TaskCreated, ev.data)
        refusal = jsonsafe.row_refusal(data.title, data.payload)
        if refusal is not None:
            _park(worker, lane, r, f"task.created holds a value the read model cannot "
                                   f"store: {refusal}")
            return
    tid = ev.subject
    if ev.chainhash is not None and ev.source != worker.source:
        lane.chain[tid] = ev.chainhash  # its own events are linked when staged
    if ev.type is EventType.CREATED and tid in lane.finished:
        worker.duplicates += 1  # the fold ignores it too: the first task.created wins
        return
    state = apply(lane.states.get(tid), ev)
    lane.states[tid] = state
    spec = ev.data if isinstance(ev.data, TaskCreated) else getattr(ev.data, "spec", None)
    if isinstance(spec, TaskCreated) and spec.concurrency_key and tid not in lane.keys:
        lane.keys[tid] = (spec.concurrency_key, spec.max_concurrency or 1)
    if ev.type is EventType.REDRIVEN:
        lane.base[tid] = state.attempt
    if (ev.type in _TRIGGERS and not state.terminal and worker.claims(state.type)
            and (state.created_at is not None or ev.type is EventType.REDRIVEN)):
        # Keep the earliest trigger of an unfinished task: committing past its
        # task.created would lose the definition a restarted worker needs. A task of
        # another pool's type is that pool's (and one whose task.created this lane never
        # saw, its type unknown, was another pool's: its own pool kept it open).
        lane.open.setdefault(tid, r.offset)
    if state.terminal:
        lane.open.pop(tid, None)
        task = lane.running.get(tid)
        if task is not None and tid not in lane.cancel_reason:
            lane.cancel_reason[tid] = "superseded"
            task.cancel()
        if tid not in lane.running:
            lane.states.pop(tid, None)  # nothing more to do for it
            lane.keys.pop(tid, None)
            lane.base.pop(tid, None)
            lane.chain.pop(tid, None)
            lane.finished[tid] = None
            if len(lane.finished) > FINISHED_MEMORY:
                lane.finished.popitem(last=False)
    if ev.type is EventType.CANCEL_REQUESTED:
        task = lane.running.get(tid)
        if task is not None:
            lane.cancel_reason[tid] = "cancel"
            ctx = lane.ctxs.get(tid)
            if ctx is not None:
                ctx.cancelled = True  # the signal a thread-run handler can check
            task.cancel()  # an async handler stops at its next await
        elif tid in lane.open and tid not in lane.resolved and not lane.recovering:
            _cancel_now(worker, lane, tid, state)
    elif ev.type in _TRIGGERS and not lane.recovering:
        schedule(worker, lane, tid)
    if not lane.recovering and not lane.dirty.is_set() and not lane.open:
        lane.dirty.set()  # move the committed offset along on quiet partitions


def _cancel_now(worker: Worker, lane: Lane, tid: uuid.UUID, state: TaskState) -> None:
    worker.cancelled += 1
    lane.stage(worker.event(TaskCancelled(reason="cancel requested"), tid, state.attempt,
                          state.tenant), resolve=tid)


def schedule(worker: Worker, lane: Lane, tid: uuid.UUID) -> None:
    state = lane.states.get(tid)
    if (state is None or state.terminal or tid in lane.running or tid in lane.resolved
            or tid not in lane.open):
        return
    if state.cancel_requested:
        _cancel_now(worker, lane, tid, state)
        return
    if state.type not in REGISTRY:  # waits, PENDING, for a worker that has the handler
        if state.type not in worker.missing:
            worker.missing.add(state.type)
            log.warning("no handler for type %r: its tasks wait for a worker that has one",
                        state.type)
        return
    lane.running[tid] = asyncio.create_task(_run_task(worker, lane, tid, state))



async def _run_task(worker: Worker, lane: Lane, tid: uuid.UUID, state: TaskState) -> None:
    attempt = state.attempt + 1
    leased = False
    try:
        if state.not_before is not None:
            worker.waiting += 1
            try:
                # The loop's monotonic timer may fire a hair early against the wall
                # clock the event time uses, so wait until the wall clock agrees.
                for _ in range(10):
                    delay = (state.not_before - datetime.now(UTC)).total_seconds()
                    if delay <= 0:
                        break
                    await asyncio.sleep(delay + 0.001)
            finally:
                worker.waiting -= 1
        lane.queued.add(tid)  # until it has a slot: a revoke drops it at once
        try:
            rate = worker.rates.get(state.type)
            if rate is not None:  # its turn first, so that waiting for it holds no slot
                await rate.take()
            key = lane.keys.get(tid)
            if key is not None:  # a place under its key first, holding no slot meanwhile
                leased = True
                await worker.leases.acquire(key[0], key[1], tid)
            await worker.gate.acquire(state.priority, state.tenant)
        finally:
            lane.queued.discard(tid)
        try:
            await _attempt(worker, lane, tid, state, attempt)
        finally:
            worker.gate.release(state.tenant)
    except asyncio.CancelledError:
        reason = lane.cancel_reason.get(tid)
        if reason == "cancel":
            worker.cancelled += 1
            lane.stage(worker.event(TaskCancelled(reason="cancel requested"), tid, attempt,
                                  state.tenant), resolve=tid)
        elif reason is None:
            raise
    finally:
        lane.running.pop(tid, None)
        lane.cancel_reason.pop(tid, None)
        worker.room.set()  # the main loop may be waiting for room to resume
        if leased:  # back once the task's end is in the log, not before
            lane.on_commit.append(functools.partial(worker.leases.release_soon, tid))
            lane.dirty.set()


async def _attempt(worker: Worker, lane: Lane, tid: uuid.UUID, state: TaskState,
                   attempt: int) -> None:
    s = worker.settings
    worker.started += 1
    lane.stage(worker.event(TaskProcessing(worker_id=worker.worker_id), tid, attempt, state.tenant))
    fn = REGISTRY.get(state.type)
    timeout = state.timeout_s or s.default_timeout_s
    ctx = TaskCtx(task_id=str(tid), attempt=attempt, lane=lane, tid=tid, tenant=state.tenant)
    lane.ctxs[tid] = ctx
    wmetrics.IN_FLIGHT.inc()
    t0 = time.monotonic()
    try:
        await _run_handler(worker, lane, tid, state, attempt, ctx, fn, timeout)
    finally:
        lane.ctxs.pop(tid, None)
        wmetrics.IN_FLIGHT.dec()
        wmetrics.DURATION.labels(state.type).observe(time.monotonic() - t0)


async def _run_handler(worker: Worker, lane: Lane, tid: uuid.UUID, state: TaskState,
                       attempt: int, ctx: TaskCtx, fn: AsyncHandler | None,
                       timeout: float) -> None:
    s = worker.settings
    error: str | None = None
    reason: FailureReason = "error"
    retryable = True
    key: bytes | None = None
    if fn is None:
        error, retryable = f"no handler registered for type {state.type!r}", False
    else:
        try:
            payload = dict(state.payload)
            if crypto.is_sealed(payload):  # the result is sealed with the same key
                key = await worker.data_key(tid)
                payload = crypto.open_value(key, tid, "payload", payload)
            async with asyncio.timeout(timeout):  # no extra task, unlike wait_for
                result = await fn(payload, ctx)
        except crypto.Erased as exc:  # no key, ever again: retrying cannot help
            error, retryable = str(exc), False
        except TimeoutError:
            error, reason = f"timed out after {timeout:g}s", "timeout"
        except asyncio.CancelledError:
            raise
        except HandlerError as exc:  # the handler says retrying cannot help
            error, retryable = str(exc), False
        except Exception as exc:  # anything else may be transient: retry it
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        else:
            try:
                result = storable(result, max_depth=s.max_json_depth,
                                  max_keys=s.max_json_keys)
            except ValueError as exc:  # the same result would fail every attempt
                error, retryable = str(exc), False
        if error is None:
            if key is not None:
                result = crypto.seal_value(key, tid, "result", result)
            worker.done += 1
            wmetrics.FINISHED.labels(state.type, "DONE").inc()
            lane.stage(worker.event(TaskDone(result=result), tid, attempt, state.tenant),
                       resolve=tid)
            return
    assert error is not None
    error = scrub_nul(error)  # exception texts may quote the payload's bytes
    max_attempts = state.max_attempts or s.default_max_attempts
    used = attempt - lane.base.get(tid, 0)
    if retryable and used < max_attempts:
        delay = backoff(used, base_s=s.retry_base_s, cap_s=s.retry_cap_s)
        worker.retries += 1
        wmetrics.FINISHED.labels(state.type, "RETRYING").inc()
        not_before = datetime.now(UTC) + timedelta(seconds=delay)
        lane.stage(worker.event(
            TaskRetryScheduled(error=error, reason=reason,
                               not_before=not_before, delay_s=round(delay, 3)),
            tid, attempt, state.tenant))  # still open: the retry is read back and run
        return
    worker.failed += 1
    wmetrics.FINISHED.labels(state.type, "FAILED").inc()
    lane.stage(
        worker.event(TaskFailed(error=error, reason=reason), tid, attempt,
                   state.tenant),
        worker.event(TaskDeadLettered(error=error), tid, attempt, state.tenant),
        resolve=tid,
    )
