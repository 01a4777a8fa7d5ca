"""The dashboard's schedules panel, in a real browser (see tests/test_dashboard.py)."""

from __future__ import annotations

import httpx
from playwright.async_api import Browser

from tests.helpers import Env
from tests.test_dashboard import browser, open_dashboard
from tests.test_schedules import senv

__all__ = ["browser", "senv"]  # the fixtures, used by name


async def test_schedules_panel_shows_next_and_last_run_and_its_status(
        senv: Env, browser: Browser) -> None:
    env = senv
    env.proc("projector")
    env.proc("worker")
    env.proc("scheduler")
    await env.api()
    async with httpx.AsyncClient(base_url=env.base_url, timeout=30) as c:
        r = await c.post("/schedules", json={
            "name": "heartbeat", "every_s": 1,
            "task": {"title": "beat", "payload": {"message": "hi"}}})
        assert r.status_code == 201, r.text
        sid = r.json()["schedule_id"]
        r = await c.post("/tasks", json={"title": "later", "payload": {"message": "x"},
                                         "delay_s": 600})
        assert r.status_code == 202 and r.json()["status"] == "DELAYED"
        later = r.json()["task_id"]
        got = await c.get(f"/tasks/{later}")  # waits for the projection
        due = got.json()["not_before"]
        assert due
    dash = await open_dashboard(browser, env)
    row = f'#sched-rows tr[data-schedule-id="{sid}"]'
    await dash.until(f"!!document.querySelector('{row}')")
    await dash.until(f"document.querySelector('{row} td:nth-child(5)').textContent === 'DONE'")
    cells = await dash.page.locator(f"{row} td").all_inner_texts()
    assert cells[0] == "heartbeat" and cells[1] == "every 1 s"
    assert cells[2] != "–" and cells[3] != "–"
    await dash.until("document.querySelector(\"#counts [data-status='DELAYED'] b\")"
                     ".textContent === '1'")
    await dash.shot("schedules-panel.png")
    # A delayed task's detail panel shows when it is due.
    await dash.until(f"!!document.querySelector('{dash.row(later)}')")
    await dash.page.locator(dash.row(later)).get_by_role("button", name="later").click()
    await dash.until("document.querySelector('#detail').dataset.status === 'DELAYED'")
    assert await dash.page.locator("#d-due time").get_attribute("datetime") == due
    assert dash.errors == [] and dash.console == []
