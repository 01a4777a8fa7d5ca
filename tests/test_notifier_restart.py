"""A notifier killed with ``kill -9`` mid-retries: the next one continues each
delivery's attempt count from the log, and the attempt limit with it."""

from __future__ import annotations

from collections import defaultdict

import httpx
import pytest

from events import webhooks as wh
from tests.helpers import Env, wait_until
from tests.test_notifier import deliveries, hooks_env, receiver, submit, subscribe
from tests.test_webhooks import hook_events
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.slow
__all__ = ["hooks_env", "receiver"]

MAX = 6


async def test_kill_9_continues_the_attempt_count(hooks_env: Env, receiver: Receiver) -> None:
    env = hooks_env
    env.extra.update({"TASKFLOW_NOTIFIER_RETRY_BASE_S": "0.5",
                      "TASKFLOW_NOTIFIER_RETRY_CAP_S": "2",
                      "TASKFLOW_NOTIFIER_MAX_ATTEMPTS": str(MAX)})
    env.proc("projector")
    env.proc("worker")
    first = env.proc("notifier")
    await env.api()
    receiver.status["/hook"] = 503  # verified, then refused: every attempt is retried
    await receiver.start()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        hid, secret = await subscribe(c, receiver.url("/hook"), ["task.done"])
        receiver.secrets["/hook"] = secret
        await submit(c, 5)

        async def retried() -> bool:
            ds = await deliveries(c, hid)
            return len(ds) == 5 and all(d["attempts"] >= 2 for d in ds)

        await wait_until(retried, what="every delivery retried once")
        first.kill9()
        before = {d["delivery_id"]: d["attempts"] for d in await deliveries(c, hid)}
        assert all(n < MAX for n in before.values()), before
        env.proc("notifier")

        async def dead() -> bool:
            ds = await deliveries(c, hid)
            return len(ds) == 5 and all(d["status"] == "dead_lettered" for d in ds)

        await wait_until(dead, timeout=90, what="every delivery dead-lettered")
        assert all(d["attempts"] == MAX for d in await deliveries(c, hid))
    numbers: dict[str, list[int]] = defaultdict(list)
    for e in await hook_events(env):
        if e.type is wh.HookType.DELIVERY_ATTEMPTED:
            numbers[e.data["delivery_id"]].append(int(e.data["attempt"]))
    assert set(numbers) == set(before)
    for did, ns in numbers.items():
        # Each number once, up to the limit: the count went on across the kill.
        assert sorted(ns) == list(range(1, MAX + 1)), (did, ns)
    assert receiver.rejected == []
