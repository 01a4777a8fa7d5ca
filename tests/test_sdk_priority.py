"""Priority names in the SDK and in ``taskflow submit --priority``, against the real API:
a name is sent as its number, and the task is stored with it."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from taskflow_client import AsyncTaskFlow, TaskFlow, TaskSpec
from taskflow_client.models import PRIORITIES, priority_number

from events.priority import PRIORITY_NAMES
from tests.helpers import Env
from tests.test_sdk_cli import _cli


def test_the_sdk_knows_the_apis_levels() -> None:
    assert PRIORITIES == PRIORITY_NAMES
    assert priority_number("critical") == 100 and priority_number(" Low ") == -50
    assert priority_number(75) == 75
    with pytest.raises(ValueError, match="critical"):
        priority_number("urgent")
    assert TaskSpec("t", priority="high").body()["priority"] == 50


async def test_sdk_submits_priority_names(env: Env) -> None:
    env.proc("projector")
    await env.api()
    async with AsyncTaskFlow(env.base_url) as tf:
        crit = await tf.submit("c", type="noop", priority="critical")
        low = await tf.submit("l", type="noop", priority="low")
        num = await tf.submit("n", type="noop", priority=75)
        [batched] = await tf.submit_many([TaskSpec("b", "noop", priority="high")])
        got = {h.id: (await tf.get(h.id)).priority for h in (crit, low, num, batched)}
        assert got == {crit.id: 100, low.id: -50, num.id: 75, batched.id: 50}
        keyed = await tf.submit("k", type="noop", priority="high", concurrency_key="crm:acme",
                                max_concurrency=2)
        created = (await tf.history(keyed.id))[0].data
        assert (created["concurrency_key"], created["max_concurrency"]) == ("crm:acme", 2)

    def sync() -> int:
        with TaskFlow(env.base_url) as tf:
            h = tf.submit("s", type="noop", priority="normal")
            return tf.get(h.id).priority

    assert await asyncio.to_thread(sync) == 0


async def test_cli_submit_priority_names(env: Env) -> None:
    env.proc("projector")
    await env.api()
    r = await _cli(env, "submit", "--type", "noop", "--priority", "critical")
    assert r.returncode == 0, r.stderr
    [handle] = [orjson.loads(line) for line in r.stdout.splitlines()]
    r = await _cli(env, "submit", "--type", "noop", "--priority", "-7")
    assert r.returncode == 0, r.stderr
    [numbered] = [orjson.loads(line) for line in r.stdout.splitlines()]
    async with AsyncTaskFlow(env.base_url) as tf:
        assert (await tf.get(handle["task_id"])).priority == 100
        assert (await tf.get(numbered["task_id"])).priority == -7
    bad = await _cli(env, "submit", "--type", "noop", "--priority", "urgent")
    assert bad.returncode == 2 and "--priority" in bad.stderr
    out_of_range = await _cli(env, "submit", "--type", "noop", "--priority", "101")
    assert out_of_range.returncode == 1
    problem = orjson.loads(out_of_range.stderr.strip().splitlines()[-1])
    assert problem["status"] == 422 and problem["errors"][0]["loc"] == ["body", "priority"]
