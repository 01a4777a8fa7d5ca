"""``GET /schedules/{id}?as_of=`` folds the schedule's journal (``schedule_events``), and
``projections verify`` / ``rebuild`` cover that journal: real scheduler and API."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import httpx

from events.models import EventType
from events.schedules import schedule_topic
from events.settings import Settings
from projector import schedules as proj
from tests.helpers import Env, wait_until
from tests.test_schedules import _gone, _paused, create, senv, services

__all__ = ["senv"]


async def test_as_of_a_time_or_a_position_and_verify_covers_the_journal(senv: Env) -> None:
    env = senv
    await services(env)
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        sid = await create(c, every_s=3600, name="first")
        await wait_until(lambda: _paused(c, sid, False), timeout=30, what="projected")
        created = datetime.now(UTC).isoformat()
        assert (await c.post(f"/schedules/{sid}:pause")).status_code == 200
        await wait_until(lambda: _paused(c, sid, True), timeout=30, what="paused")
        paused = datetime.now(UTC).isoformat()
        assert (await c.patch(f"/schedules/{sid}", json={"name": "second"})).status_code == 200

        async def renamed() -> bool:
            return bool((await c.get(f"/schedules/{sid}")).json()["name"] == "second")

        await wait_until(renamed, timeout=30, what="renamed")
        assert (await c.delete(f"/schedules/{sid}")).status_code == 204
        await wait_until(lambda: _gone(c, sid), timeout=30, what="deleted")

        async def at(point: str) -> httpx.Response:
            return await c.get(f"/schedules/{sid}", params={"as_of": point})

        then = (await at(created)).json()
        assert (then["name"], then["paused"], then["every_s"]) == ("first", False, 3600)
        assert then["schedule_id"] == sid and then["next_run_at"] is not None
        then = (await at(paused)).json()
        assert (then["name"], then["paused"]) == ("first", True)
        assert (await at("2000-01-01T00:00:00Z")).status_code == 404
        assert (await at(datetime.now(UTC).isoformat())).status_code == 404  # deleted
        assert (await at("yesterday")).status_code == 422
        # A position of the schedule topic: the record of the rename.
        records = await env.read_log(schedule_topic(env.topic))
        from events.codec import decode

        [upd] = [r for r in records if decode(r.value).type is EventType.SCHEDULE_UPDATED]
        then = (await at(f"{upd.partition}:{upd.offset}")).json()
        assert (then["name"], then["paused"]) == ("second", True)
        before = (await at(f"{upd.partition}:{upd.offset - 1}")).json()
        assert before["name"] == "first"
    for p in env.procs:
        if p.argv[0] == "scheduler":
            p.terminate()
    settings = Settings(database_url=env.database_url, topic=env.topic,
                        kafka_bootstrap=env.bootstrap)
    assert (await proj.verify(settings))[0] == []
    conn = await env.db()
    try:
        n = await conn.fetchval("SELECT count(*) FROM schedule_events WHERE schedule_id = $1",
                                uuid.UUID(sid))
        assert n == 4  # created, paused, updated, deleted
        await conn.execute('DELETE FROM schedule_events WHERE partition = $1 AND "offset" = $2',
                           upd.partition, upd.offset)
        diffs, _ = await proj.verify(settings)
        assert [(d.task_id, d.field, d.live, d.log) for d in diffs] == [
            (f"journal {upd.partition}:{upd.offset}", "row", "absent", "present")]
        await proj.rebuild(settings)
        assert (await proj.verify(settings))[0] == []
        assert await conn.fetchval("SELECT count(*) FROM schedule_events") == n
    finally:
        await conn.close()
