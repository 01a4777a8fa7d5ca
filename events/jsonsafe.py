"""The JSON values TaskFlow carries exactly, and how they go into Postgres jsonb.

A payload, title or result travels through the log (pydantic's JSON), the fold, Postgres
``jsonb`` (read back by orjson and by the stdlib ``json``) and the SSE encoder (orjson).
``check`` refuses what any of them cannot carry, so that a value accepted at the edge
is a value every projection holds exactly:

* integers outside signed 64 bits: orjson cannot write them, and reads those below
  -2**63 or above 2**64-1 back as floats;
* NaN and the infinities: JSON has no literal for them (pydantic writes ``null``);
* negative zero: ``jsonb`` numbers are ``numeric``, which has no -0;
* NUL (U+0000), in keys as in values: Postgres ``text`` and ``jsonb`` cannot store it;
* lone surrogates (U+D800 to U+DFFF), in keys as in values: UTF-8 cannot encode them;
* nesting deeper than ``max_depth`` and objects with more than ``max_keys`` keys
  (``TASKFLOW_MAX_JSON_DEPTH``, ``TASKFLOW_MAX_JSON_KEYS``): every reader and writer
  walks a value recursively, and ``jsonb`` sorts every object's keys.

``jsonb_text`` writes a value so that it reads back with the same types: ``jsonb``
stores a number as ``numeric``, which keeps a decimal point only if the text had one,
so a float that orjson writes with a positive exponent (``1e+16``) would come back as
an integer. Such floats are written out in full, with a ``.0``.

The check is one pass over the value, in Python, with no regular expression.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from typing import Any, Final

import orjson

from events.constants import MAX_JSON_DEPTH, MAX_JSON_KEYS
from events.errors import UnsafeJson

INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1
_SURROGATE: Final = re.compile("[\ud800-\udfff]")  # one character class: no backtracking
# A number with a positive exponent (``1e16``, ``1E+16``): a fixed-length pattern.
_EXPONENT: Final = re.compile(rb"[0-9][eE]\+?[0-9]")


def _check_str(s: str, what: str) -> None:
    if "\x00" in s:
        raise UnsafeJson(f"{what} contains U+0000 (NUL), which Postgres cannot store",
                         "nul_character")
    # isascii() is a flag test; only other strings can hold a surrogate.
    if not s.isascii() and _SURROGATE.search(s) is not None:
        raise UnsafeJson(f"{what} contains a lone surrogate, which UTF-8 cannot encode",
                         "lone_surrogate")


def _check_scalar(v: Any) -> None:
    """Refuse a non-container value that is not one TaskFlow carries exactly."""
    t = type(v)
    if t is str:
        _check_str(v, "the string")
    elif t is int:
        if not INT_MIN <= v <= INT_MAX:
            raise UnsafeJson("integer outside signed 64 bits", "int_range")
    elif t is float:
        if not math.isfinite(v):
            raise UnsafeJson(f"{v!r} is not a JSON number", "float_not_finite")
        if v == 0.0 and math.copysign(1.0, v) < 0:
            raise UnsafeJson("negative zero: Postgres jsonb stores it as 0.0",
                             "negative_zero")
    elif v is None or t is bool:
        pass
    else:
        raise UnsafeJson(f"{t.__name__} is not a JSON value", "not_json")


def check(value: Any, *, max_depth: int = MAX_JSON_DEPTH, max_keys: int = MAX_JSON_KEYS,
          loc: list[str | int] | None = None) -> None:
    """Raise ``UnsafeJson`` at the first part of ``value`` TaskFlow cannot carry exactly.

    ``value`` is a JSON value as Python objects (dict, list, str, int, float, bool,
    None). ``UnsafeJson.loc`` is ``loc`` followed by the keys and indexes leading to the
    offending part. Nesting counts containers: ``{}`` is 1 deep, ``{"a": []}`` 2.
    """
    try:
        _walk(value, 1, max_depth, max_keys)
    except UnsafeJson as exc:
        exc.loc[:0] = loc or []
        raise


def _walk(v: Any, depth: int, max_depth: int, max_keys: int) -> None:
    # Scalars inside a container are checked inline: a body of many small values spends
    # its time in this loop, and a call per value would double it.
    t = type(v)
    keyed = t is dict
    if not keyed and t is not list:
        _check_scalar(v)
        return
    if depth > max_depth:
        raise UnsafeJson(f"nested deeper than {max_depth} levels", "json_depth")
    if keyed and len(v) > max_keys:
        raise UnsafeJson(f"an object with {len(v)} keys; at most {max_keys}", "json_keys")
    members: Any = v.items() if keyed else enumerate(v)
    for k, x in members:
        try:
            if keyed:
                if type(k) is not str:
                    raise UnsafeJson(f"key {k!r} is not a string", "not_json")
                if not k.isascii() or "\x00" in k:
                    _check_str(k, "the key")
            tx = type(x)
            if tx is str:
                if not x.isascii() or "\x00" in x:
                    _check_str(x, "the string")
            elif tx is int:
                if not INT_MIN <= x <= INT_MAX:
                    raise UnsafeJson("integer outside signed 64 bits", "int_range")
            elif tx is dict or tx is list:
                _walk(x, depth + 1, max_depth, max_keys)
            elif x is not None and tx is not bool:
                _check_scalar(x)
        except UnsafeJson as exc:
            exc.loc.insert(0, k)
            raise


# --- jsonb ---------------------------------------------------------------------------


def _full(f: float) -> orjson.Fragment:
    """A float orjson writes with a positive exponent, as plain digits and ``.0``.

    The digits are its shortest repr's, which parse back to the same float.
    """
    return orjson.Fragment(format(Decimal(repr(f)), "f").encode() + b".0")


def _spelled_out(v: Any, *, big_ints: bool = False) -> Any:
    """``v`` with every float that orjson writes as ``<m>e+<n>`` replaced by its digits;
    with ``big_ints``, integers orjson cannot write too."""
    t = type(v)
    if t is float:
        return _full(v) if math.isfinite(v) and "e+" in repr(v) else v
    if t is dict:
        return {k: _spelled_out(x, big_ints=big_ints) for k, x in v.items()}
    if t is list:
        return [_spelled_out(x, big_ints=big_ints) for x in v]
    if big_ints and t is int and not INT_MIN <= v <= 2**64 - 1:
        return orjson.Fragment(str(v).encode())
    return v


def row_refusal(title: str, payload: Any) -> str | None:
    """Why the read model cannot store a task with this title and payload, or None.

    What the projector's own write does with them, not the API's stricter ``check``:
    a value the edge refuses but the read model can hold (an integer up to 2**64-1, a
    negative zero) is stored by the projector, so a consumer that parks on this agrees
    with it. (NUL never gets this far: ``events.codec`` refuses it.)
    """
    try:
        title.encode()
        jsonb_text(payload)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def jsonb_text(value: Any) -> bytes:
    """``value`` as JSON text that ``jsonb`` reads back with the same types.

    The common value has no float with a positive exponent, and costs one ``dumps``
    and a byte search. Raises ``TypeError`` (orjson's) for what JSON cannot hold.
    """
    out = orjson.dumps(value)
    if b"e+" not in out:  # also seen in a string: then the walk just finds no float
        return out
    return orjson.dumps(_spelled_out(value))


def jsonb_bytes(raw: bytes) -> bytes:
    """JSON text written by another encoder (a log record), made safe for ``jsonb``.

    pydantic writes a float with a positive exponent as ``1e+16`` too, and another
    producer may write ``1E16``. Only then is the text parsed (by the stdlib, which
    keeps integers of any size exact) and written again.
    """
    if _EXPONENT.search(raw) is None:
        return raw
    return orjson.dumps(_spelled_out(json.loads(raw), big_ints=True))
