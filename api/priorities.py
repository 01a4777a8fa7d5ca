"""Priority in query strings: a number from -100 to 100, or a level name."""

from __future__ import annotations

from api.problems import Invalid
from events.priority import PRIORITY_MAX, PRIORITY_MIN, PRIORITY_NAMES, parse_priority


def query_priority(name: str, raw: str | None) -> int | None:
    """``?priority=high`` -> 50; a 422 problem naming ``name`` for anything else."""
    if raw is None:
        return None
    try:
        value = parse_priority(raw)
        n = int(value)
    except ValueError:
        n = PRIORITY_MAX + 1
    if not PRIORITY_MIN <= n <= PRIORITY_MAX:
        raise Invalid(f"{name} must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX} or "
                      f"one of {', '.join(PRIORITY_NAMES)}",
                      errors=[{"loc": ["query", name], "msg": "not a priority",
                               "type": "value"}])
    return n
