"""Rate limits per task type, across a pool of three workers, checked from the log."""

from __future__ import annotations

import uuid
from datetime import timedelta

from events.models import CloudEvent, TaskCreated, new_event
from tests.helpers import Env, wait_until
from tests.test_priorities import _append, _starts, _workers_settled
from tests.test_worker import all_terminal_in_log

RATE = 5  # noop starts per second, across the pool


async def test_a_type_rate_limit_holds_across_three_workers(env: Env) -> None:
    for _ in range(3):
        env.proc("worker", TASKFLOW_TYPE_RATE_LIMITS=f"noop={RATE}")
    await _workers_settled(env, 3)
    events: list[CloudEvent] = [
        new_event(TaskCreated(title=f"n{i}", type="noop", payload={}), task_id=uuid.uuid4(),
                  source="test") for i in range(40)]
    echo = new_event(TaskCreated(title="e", payload={"message": "m"}), task_id=uuid.uuid4(),
                     source="test")
    await _append(env, [*events, echo])
    tids = {str(e.subject) for e in events}
    await wait_until(lambda: all_terminal_in_log(env, tids | {str(echo.subject)}),
                     timeout=120, what="every task terminal")
    starts = await _starts(env)
    times = sorted(starts[t] for t in tids)
    # At every start, count the starts in the two seconds up to it: at most the rate's
    # worth, plus one per worker (each bucket may start one at once).
    window = timedelta(seconds=2)
    busiest = max(sum(1 for u in times if t - window < u <= t) for t in times)
    assert busiest <= 2 * RATE + 3, busiest
    # Another type is not held back by noop's turn: echo started before noop's last.
    assert starts[str(echo.subject)] < times[-1]
