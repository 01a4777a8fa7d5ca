"""Priority levels: the names a client may give instead of a number.

A task's ``priority`` is an integer from ``PRIORITY_MIN`` to ``PRIORITY_MAX``; higher
starts first. The four names map to fixed numbers, spaced so that a client can still put
work between two levels (``75`` is above ``high`` and below ``critical``).
"""

from __future__ import annotations

from typing import Any, Final

PRIORITY_MIN: Final = -100
PRIORITY_MAX: Final = 100
PRIORITY_NAMES: Final[dict[str, int]] = {
    "low": -50,
    "normal": 0,
    "high": 50,
    "critical": 100,
}


def parse_priority(value: Any) -> Any:
    """A level name becomes its number; anything else is left for the int validator."""
    if isinstance(value, str):
        named = PRIORITY_NAMES.get(value.strip().lower())
        if named is not None:
            return named
        if not value.strip().lstrip("+-").isdigit():
            raise ValueError(f"must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX} "
                             f"or one of {', '.join(PRIORITY_NAMES)}")
    return value


def parse_tenant_weights(text: str) -> dict[str, float]:
    """``"acme=3,globex=1"`` -> ``{"acme": 3.0, "globex": 1.0}``; ``ValueError`` if bad.

    Also reads ``TASKFLOW_TYPE_RATE_LIMITS`` (``"email=10"``: tasks started per second).
    """
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected tenant=weight, got {part!r}")
        w = float(weight)
        if not w > 0:
            raise ValueError(f"the weight of {name.strip()!r} must be above 0, got {weight!r}")
        out[name.strip()] = w
    return out
