"""Worker pools: which consumer group runs which task types.

A worker started with ``--types email,http`` (``TASKFLOW_WORKER_TYPES``) is a member of
the pool ``email+http``: its own consumer group, ``<worker group>.pool.email+http``, which
reads every partition and runs only those types. Workers without types form the default
pool (the plain worker group) and run every type they have a handler for, except the
types listed in ``TASKFLOW_POOLED_TYPES``, which only dedicated pools run. Pools never
share a type, so no task runs in two groups at once.

A task whose type no pool serves stays PENDING until a worker that serves it starts: it
is never failed for want of a handler.
"""

from __future__ import annotations

from typing import Final

POOL_INFIX: Final = ".pool."
DEFAULT_POOL: Final = "default"


def type_list(text: str) -> tuple[str, ...]:
    """``"http, email,http"`` -> ``("email", "http")``: sorted, no repeats."""
    return tuple(sorted({t.strip() for t in text.split(",") if t.strip()}))


def pool_name(types: tuple[str, ...]) -> str:
    return "+".join(types) if types else DEFAULT_POOL


def pool_group(worker_group: str, types: tuple[str, ...]) -> str:
    """The consumer group of the pool serving ``types`` (the default pool: no types)."""
    return f"{worker_group}{POOL_INFIX}{pool_name(types)}" if types else worker_group


def group_types(worker_group: str, group: str) -> tuple[str, ...] | None:
    """The types of the pool whose group is ``group``; ``()`` for the default pool and
    None for a group that is no pool of ``worker_group``."""
    if group == worker_group:
        return ()
    prefix = worker_group + POOL_INFIX
    if group.startswith(prefix) and len(group) > len(prefix):
        return tuple(group[len(prefix):].split("+"))
    return None


def serves(type_: str, *, types: tuple[str, ...], pooled: tuple[str, ...]) -> bool:
    """Whether the pool of ``types`` runs tasks of ``type_``."""
    return type_ in types if types else type_ not in pooled

