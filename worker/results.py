"""What a task's result must be before ``task.done`` may carry it."""

from __future__ import annotations

from typing import Any

from pydantic_core import PydanticSerializationError, to_jsonable_python

from events import constants, jsonsafe
from events.errors import UnsafeJson


def storable(result: Any, *, max_depth: int = constants.MAX_JSON_DEPTH,
             max_keys: int = constants.MAX_JSON_KEYS) -> Any:
    """``result`` as the JSON value ``task.done`` will carry, or ValueError if it has none.

    Checked before anything is staged: a result that cannot be encoded would otherwise
    fail the lane's whole transaction, and one the read model cannot hold exactly (the
    values the API refuses in a payload, ``events.jsonsafe``) would be refused or changed
    by it. Python values JSON lacks (a tuple, a datetime) are converted as pydantic does;
    NaN and the infinities are kept as they are, so that the check refuses them rather
    than pydantic writing ``null`` for them.
    """
    if result is None or type(result) is bool or (
            type(result) is int and jsonsafe.INT_MIN <= result <= jsonsafe.INT_MAX):
        return result  # the common cases, JSON as they are
    try:
        value = to_jsonable_python(result, inf_nan_mode="constants")
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise ValueError(f"the result cannot be stored as JSON: {exc}") from None
    try:
        jsonsafe.check(value, max_depth=max_depth, max_keys=max_keys)
    except UnsafeJson as exc:
        raise ValueError(f"the result cannot be stored exactly: {exc}") from None
    return value
