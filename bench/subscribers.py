"""SSE subscribers for the fan-out scenario, in client processes of their own.

Subscribers live in separate client processes (``multiprocessing``, spawn), so the
client's own CPU does not come out of the bench's event loop. Each subscriber is a raw
``asyncio.Protocol`` on ``GET /events?after=<start>``: it counts ``id:`` lines, which is
all it needs to find missed events, since every subscriber must see every position
after ``start`` exactly once. One subscriber in ``sample_every`` also records
``(position, receipt time)``; the bench joins those with ``task_changes`` afterwards, to
get the delivery latency from the change's ``time`` (the event's time) and from
``recorded_at`` (the projector's transaction) without parsing JSON in the client.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.procs import BenchError
from bench.stats import bar


@dataclass
class _Sub(asyncio.Protocol):
    request: bytes
    sample: bool
    count: int = 0
    last: int = 0  # the highest position seen: counts below it that are short are gaps
    lost: bool = False
    opened: bool = False  # the response has begun: the server has taken this subscriber
    received: list[tuple[int, float]] = field(default_factory=list)
    _tail: bytes = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.opened = True
        buf = self._tail + data
        if self.sample:
            now = time.time()
            lines = buf.split(b"\n")
            self._tail = lines.pop()
            for line in lines:
                if line.startswith(b"id: "):
                    self.count += 1
                    self.last = int(line[4:].strip())
                    self.received.append((self.last, now))
        else:
            # Only whole lines are read; the unfinished last line waits for the next
            # chunk. (An id line cut between two chunks must not hide the last position.)
            cut = buf.rfind(b"\n")
            if cut < 0:
                self._tail = buf
                return
            part, self._tail = b"\n" + buf[:cut + 1], buf[cut + 1:]
            # The leading "\n" stands for the end of the previous part, so that an id line
            # at the very start of this one matches too.
            self.count += part.count(b"\nid: ")
            i = part.rfind(b"\nid: ")
            if i >= 0:
                self.last = int(part[i + 5:part.index(b"\n", i + 5)])

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


def _factory(sub: _Sub) -> Callable[[], _Sub]:
    return lambda: sub


def _client(port: int, path: str, n: int, sample_every: int, connected: Any, opened: Any,
            counted: Any, stop: Any, out: Any) -> None:
    """One client process: ``n`` subscribers until ``stop`` is set; results to ``out``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n + 256))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    asyncio.run(_client_main(port, path, n, sample_every, connected, opened, counted, stop,
                             out))


async def _client_main(port: int, path: str, n: int, sample_every: int, connected: Any,
                       opened: Any, counted: Any, stop: Any, out: Any) -> None:
    loop = asyncio.get_running_loop()
    req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
           "Accept: text/event-stream\r\n\r\n").encode()
    subs: list[_Sub] = []
    transports: list[asyncio.BaseTransport] = []
    for start in range(0, n, 50):  # in steps, so the accept backlog never overflows:
        # no more than 250 connections of this process wait for their response to begin.
        while len(subs) - sum(s.opened for s in subs) > 200 and not stop.is_set():
            opened.value = sum(s.opened for s in subs)
            await asyncio.sleep(0.01)
        batch = [_Sub(req, sample=(start + i) % sample_every == 0)
                 for i in range(min(50, n - start))]
        made = await asyncio.gather(*(loop.create_connection(_factory(s), "127.0.0.1", port)
                                      for s in batch))
        transports.extend(t for t, _ in made)
        subs.extend(batch)
        connected.value = len(subs)
    while not stop.is_set():
        opened.value = sum(s.opened for s in subs)
        counted.value = sum(s.count for s in subs)
        await asyncio.sleep(0.1)
    counted.value = sum(s.count for s in subs)
    for t in transports:
        t.close()
    out.put({"counts": [s.count for s in subs], "lasts": [s.last for s in subs],
             "lost": sum(s.lost for s in subs),
             "received": [r for s in subs if s.sample for r in s.received]})


class Subscribers:
    """``subscribers`` SSE subscribers on ``path``, spread over ``processes`` clients."""

    def __init__(self, port: int, path: str, subscribers: int, *, processes: int = 2,
                 sample_every: int = 10) -> None:
        ctx = mp.get_context("spawn")
        self.subscribers = subscribers
        self.stop = ctx.Event()
        self.out: Any = ctx.Queue()
        shares = [subscribers // processes + (1 if i < subscribers % processes else 0)
                  for i in range(processes)]
        self.connected = [ctx.Value("i", 0) for _ in shares]
        self.opened = [ctx.Value("i", 0) for _ in shares]
        self.counted = [ctx.Value("q", 0) for _ in shares]
        self.procs = [ctx.Process(target=_client, daemon=True,
                                  args=(port, path, k, sample_every, self.connected[i],
                                        self.opened[i], self.counted[i], self.stop, self.out))
                      for i, k in enumerate(shares) if k]

    def start(self) -> None:
        for p in self.procs:
            p.start()

    def count(self) -> int:
        """``id:`` lines received so far, all subscribers together."""
        return sum(v.value for v in self.counted)

    async def wait_opened(self, label: str, timeout: float = 120) -> float:
        """Wait until every subscriber's response has begun; the seconds it took."""
        t0 = time.monotonic()
        with bar(label, self.subscribers, unit="sub") as pb:
            while (c := sum(v.value for v in self.opened)) < self.subscribers:
                pb.update(c - pb.n)
                if not all(p.is_alive() for p in self.procs) or \
                        time.monotonic() - t0 > timeout:
                    tcp = sum(v.value for v in self.connected)
                    raise BenchError(f"only {c} of {self.subscribers} subscribers got an answer "
                                     f"({tcp} connected)")
                await asyncio.sleep(0.1)
            pb.update(self.subscribers - pb.n)
        return time.monotonic() - t0

    def results(self) -> list[dict[str, Any]]:
        """Close every subscriber and collect what each client process saw."""
        self.stop.set()
        return [self.out.get(timeout=60) for _ in self.procs]

    def close(self) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
