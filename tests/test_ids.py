"""Task and event ids: random version 4 UUIDs, unique across threads and forks."""

from __future__ import annotations

import os
import threading
import uuid

from events import ids


def test_ids_are_version_4_uuids_like_the_standard_library_makes() -> None:
    for _ in range(1000):
        u = ids.uuid4()
        same = uuid.UUID(str(u))
        assert (u.version, u.variant) == (4, uuid.RFC_4122)
        assert u == same and hash(u) == hash(same) and u.bytes == same.bytes
        assert uuid.UUID(int=u.int) == u


def test_ids_are_unique_across_threads() -> None:
    got: list[list[uuid.UUID]] = [[] for _ in range(8)]

    def draw(out: list[uuid.UUID]) -> None:
        out.extend(ids.uuid4() for _ in range(20_000))

    threads = [threading.Thread(target=draw, args=(out,)) for out in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [u for out in got for u in out]
    assert len(set(flat)) == len(flat) == 160_000


def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    ids.uuid4()  # the pool now holds the parent's next ids
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next ids, then leave without running pytest's exit
        os.close(r)
        os.write(w, b"".join(ids.uuid4().bytes for _ in range(10)))
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    child = {uuid.UUID(bytes=data[i:i + 16]) for i in range(0, len(data), 16)}
    parent = {ids.uuid4() for _ in range(10)}
    assert len(child) == 10 and not child & parent
