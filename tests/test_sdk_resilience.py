"""The SDK when things go wrong and under load, against the real stack: a retry after a
503 creates no second task, 1,000 concurrent submits batch with each caller's own result,
and ``wait`` and ``stream`` carry on across an API restart."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from taskflow_client import AsyncTaskFlow, Retry, TransportError, Unavailable, ValidationError

from tests.helpers import Env, free_port, wait_until
from tests.test_sse import positions

UNAVAILABLE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\n"
               b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s")
PROBLEM = (b'{"type":"https://taskflow.dev/problems/log-unavailable","title":"Service '
           b'unavailable","status":503,"detail":"forced by the test proxy"}')


class Proxy:
    """A real HTTP proxy in front of the API that counts requests; with ``fail_first`` it
    forwards the first POST (the API accepts the task) and answers the client 503, as a
    lost acknowledgement would look."""

    def __init__(self, upstream_port: int, *, fail_first: bool) -> None:
        self.upstream = upstream_port
        self.fail_first = fail_first
        self.port = free_port()
        self.requests: list[str] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Proxy:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream)
        try:
            while True:
                try:
                    head = await r.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                body = await r.readexactly(_length(head))
                line = head.split(b"\r\n", 1)[0].decode()
                self.requests.append(line)
                uw.write(head + body)
                rhead = await ur.readuntil(b"\r\n\r\n")
                rbody = await ur.readexactly(_length(rhead))
                if self.fail_first and line.startswith("POST"):
                    self.fail_first = False
                    w.write(UNAVAILABLE % (len(PROBLEM), PROBLEM))
                else:
                    w.write(rhead + rbody)
                await w.drain()
        finally:
            uw.close()
            w.close()


def _length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


async def _created(env: Env) -> list[str]:
    return [str(ev.subject) for _, ev in await env.log_events() if ev.type == "task.created"]


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "single"])
async def test_retry_after_a_forced_503_creates_no_duplicate(env: Env, batch: bool) -> None:
    env.proc("projector")
    await env.api()
    async with Proxy(env.api_port, fail_first=True) as proxy, \
            AsyncTaskFlow(proxy.url, batch=batch) as tf:
        t0 = time.monotonic()
        h = await tf.submit("once", payload={"message": "x"})
        waited = time.monotonic() - t0
        assert h.replayed  # the second answer names the task the first one created
        posts = [r for r in proxy.requests if r.startswith("POST")]
    assert len(posts) == 2 and waited >= 1.0  # retried once, after Retry-After
    assert posts[0].startswith("POST /tasks:batch" if batch else "POST /tasks ")
    assert await _created(env) == [h.id]


async def test_no_retries_means_the_503_reaches_the_caller(env: Env) -> None:
    await env.api()
    async with Proxy(env.api_port, fail_first=True) as proxy, \
            AsyncTaskFlow(proxy.url, batch=False, retries=Retry(attempts=1)) as tf:
        with pytest.raises(Unavailable) as exc:
            await tf.submit("once", payload={"message": "x"})
        assert exc.value.retry_after == 1.0 and exc.value.detail == "forced by the test proxy"


async def test_auto_batching_1000_concurrent_submits(env: Env) -> None:
    env.proc("projector")
    await env.api()
    async with Proxy(env.api_port, fail_first=False) as proxy, \
            AsyncTaskFlow(proxy.url) as tf:
        results = await asyncio.gather(
            *(tf.submit("" if i == 500 else f"b{i}", payload={"message": str(i)})
              for i in range(1000)), return_exceptions=True)
        bad = results.pop(500)
        assert isinstance(bad, ValidationError) and bad.errors[0]["loc"] == [
            "body", "tasks", bad.errors[0]["loc"][2], "title"]
        assert not any(isinstance(r, BaseException) for r in results)
        ids = [r.id for r in results if not isinstance(r, BaseException)]
        assert len(set(ids)) == 999
        batches = [r for r in proxy.requests if r.startswith("POST /tasks:batch")]
        assert 1 <= len(batches) <= 10 and len(proxy.requests) == len(batches)
    assert sorted(await _created(env)) == sorted(ids)


async def test_a_batch_goes_out_at_its_size_or_its_window(env: Env) -> None:
    await env.api()
    async with Proxy(env.api_port, fail_first=False) as proxy, \
            AsyncTaskFlow(proxy.url, batch_max=100, batch_window_s=0.3) as tf:
        first = await asyncio.gather(*(tf.submit(f"z{i}") for i in range(250)))
        alone = await tf.submit("late")
    assert len({h.id for h in first} | {alone.id}) == 251
    # 100 + 100 at their size, 50 when the window closed, then the late one alone.
    assert proxy.requests == ["POST /tasks:batch?partial=true HTTP/1.1"] * 4


async def test_auto_batching_can_be_turned_off(env: Env) -> None:
    await env.api()
    async with Proxy(env.api_port, fail_first=False) as proxy, \
            AsyncTaskFlow(proxy.url, batch=False) as tf:
        await asyncio.gather(*(tf.submit(f"s{i}") for i in range(20)))
    assert proxy.requests == ["POST /tasks HTTP/1.1"] * 20


async def test_wait_rides_out_an_api_restart(env: Env) -> None:
    env.proc("projector")
    env.proc("worker")
    api = await env.api()
    async with AsyncTaskFlow(env.base_url, retries=Retry(backoff_s=0.1, max_backoff_s=0.5)
                             ) as tf:
        h = await tf.submit("slow", type="sleep", payload={"seconds": 3})
        waiting = asyncio.create_task(tf.wait(h.id, timeout=90))
        await asyncio.sleep(1)
        assert not waiting.done()
        api.kill9()
        await asyncio.sleep(0.5)
        assert not waiting.done()
        await env.api()
        task = await waiting
    assert task.status == "DONE" and task.id == h.id


async def test_stream_resumes_across_an_api_restart_without_gap_or_repeat(env: Env) -> None:
    env.proc("projector")
    env.proc("worker", TASKFLOW_WORKER_CONCURRENCY="16")
    api = await env.api()
    seen: list[int] = []
    async with AsyncTaskFlow(env.base_url, retries=Retry(backoff_s=0.1, max_backoff_s=0.5)
                             ) as tf:

        async def follow() -> None:
            async for change in tf.stream(after=0):
                seen.append(change.position)

        reading = asyncio.create_task(follow())
        first = await tf.submit_many([{"title": f"a{i}", "payload": {"message": "a"}}
                                      for i in range(100)])
        await wait_until(lambda: _some(seen, 50), timeout=60, what="changes before restart")
        api.kill9()
        api = await env.api()
        second = await tf.submit_many([{"title": f"b{i}", "payload": {"message": "b"}}
                                       for i in range(100)])
        for h in (*first, *second):
            await tf.wait(h.id, timeout=60)

        async def caught_up() -> bool:
            return bool(seen) and seen[-1] == (await positions(env))[-1]

        await wait_until(caught_up, timeout=60, what="the stream to catch up")
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
    expected = await positions(env)
    assert len(expected) >= 600  # created, processing, done for 200 tasks
    assert seen == expected  # every change once, in order, across the restart


async def _some(seen: list[int], n: int) -> bool:
    return len(seen) >= n


async def test_a_silent_stream_counts_as_broken() -> None:
    """A stream whose connection died without a FIN or RST sends nothing, not even the
    heartbeat: the reader gives up after ``idle_s`` instead of waiting forever."""
    from taskflow_client._http import Transport

    release = asyncio.Event()

    async def mute(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n5\r\n: hi\n\r\n")
        await w.drain()
        await release.wait()
        w.close()

    port = free_port()
    server = await asyncio.start_server(mute, "127.0.0.1", port)
    t = Transport(f"http://127.0.0.1:{port}")
    got: list[bytes] = []
    try:
        async with t.stream("/events", idle_s=0.5) as (resp, chunks):
            assert resp.status == 200
            with pytest.raises(TransportError, match=r"nothing for 0\.5 s"):
                async for c in chunks:
                    got.append(c)
    finally:
        release.set()
        await asyncio.sleep(0.1)  # the handler closes its side
        server.close()
        await server.wait_closed()
        await t.close()
    assert got == [b": hi\n"]
