"""Wire codec: CloudEvents structured JSON, with upcasting of older schema versions.

``decode`` is the only way bytes from the log become a ``CloudEvent``. It raises
``UndecodableEvent`` for anything that is not a valid event of a known type, so callers
can park the record and keep the partition moving.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Final, Union

import orjson
from pydantic import Field, TypeAdapter, ValidationError

from events.errors import UndecodableEvent
from events.models import DATA_MODELS, ENVELOPES, SCHEMA_VERSIONS, CloudEvent, EventType

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def _created_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Release 0.0 wrote ``params`` instead of ``payload`` and had no ``priority``."""
    out = {k: v for k, v in data.items() if k != "params"}
    out["payload"] = data.get("params", data.get("payload", {}))
    out.setdefault("priority", 0)
    return out


# (event type, version) -> function that lifts data of that version by one version.
UPCASTERS: Final[dict[tuple[EventType, int], Upcaster]] = {
    (EventType.CREATED, 1): _created_v1_to_v2,
}


_SURROGATES: Final = re.compile("[\ud800-\udfff]")
NUL_ERROR: Final = "contains U+0000 (NUL), which PostgreSQL text and jsonb cannot store"


def has_nul(value: Any) -> bool:
    """True if any string in a JSON-like value (keys included) holds a NUL character."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any("\x00" in k or has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(has_nul(v) for v in value)
    return False


def scrub_nul(text: str) -> str:
    """``text`` with each NUL and each lone surrogate replaced by U+FFFD (for messages
    TaskFlow writes itself, such as a handler's exception text: neither can be stored,
    and a surrogate cannot even be encoded into an event)."""
    text = text.replace("\x00", "\ufffd")
    return text if text.isascii() else _SURROGATES.sub("\ufffd", text)


def encode(event: CloudEvent) -> bytes:
    # pydantic's own JSON serializer: the same bytes as orjson over model_dump(mode="json"),
    # without building the intermediate dict, which was a large part of encoding's cost.
    return event.__pydantic_serializer__.to_json(event)


def upcast(etype: EventType, version: int, data: dict[str, Any]) -> dict[str, Any]:
    current = SCHEMA_VERSIONS[etype]
    if version > current:
        raise UndecodableEvent(f"{etype} schemaversion {version} is newer than {current}", None)
    while version < current:
        step = UPCASTERS.get((etype, version))
        if step is None:
            raise UndecodableEvent(f"no upcaster for {etype} schemaversion {version}", None)
        data = step(data)
        version += 1
    return data


# Fields every event TaskFlow writes has; ``actor`` (a command's) and the two of the
# audit chain (together) come on top, and are left out of the JSON while unset.
_OPTIONAL_FIELDS: Final = ("actor", "chainprev", "chainhash")
_ENVELOPE_FIELDS: Final = len(CloudEvent.model_fields) - len(_OPTIONAL_FIELDS)


def _as_written(event: CloudEvent, n: int) -> bool:
    """True if ``n`` fields are exactly those TaskFlow writes for ``event``: an optional
    attribute given as null, or half a chain, would not survive an encode unchanged."""
    return n == (_ENVELOPE_FIELDS + (event.actor is not None)
                 + (2 if event.chainhash is not None else 0))
_ANY_ENVELOPE: Final[TypeAdapter[CloudEvent]] = TypeAdapter(
    Annotated[Union[tuple(ENVELOPES.values())], Field(discriminator="type")]  # type: ignore[arg-type]  # noqa: UP007
)


def decode(raw: bytes | None) -> CloudEvent:
    """Parse one log record value into a ``CloudEvent`` at the current schema version."""
    return decode_verbatim(raw)[0]


def decode_verbatim(raw: bytes | None) -> tuple[CloudEvent, bool]:
    """``decode``, and whether ``raw`` already is that event as TaskFlow writes it: at the
    current schema version, every envelope field present. Such bytes can be stored as
    they are (the projector's journal), instead of encoding the event again.

    Fast path: one validation of the JSON into the envelope of its type. Anything it
    refuses, an older schema version, or a possible NUL takes the full path, which
    upcasts or says precisely what is wrong.
    """
    if raw is not None and b"\\u0000" not in raw:
        try:
            event = _ANY_ENVELOPE.validate_json(raw)
        except ValidationError:
            pass
        else:
            if event.schemaversion == SCHEMA_VERSIONS[event.type]:
                return event, _as_written(event, len(event.model_fields_set))
    return _decode_fully(raw)


def _decode_fully(raw: bytes | None) -> tuple[CloudEvent, bool]:
    if raw is None:
        raise UndecodableEvent("record has no value", raw)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UndecodableEvent(f"not JSON: {exc}", raw) from None
    if not isinstance(doc, dict):
        raise UndecodableEvent("not a JSON object", raw)
    # JSON can carry NUL only as an escape; the scan is a memchr, the walk is rare.
    if b"\\u0000" in raw and has_nul(doc):
        raise UndecodableEvent(NUL_ERROR, raw)
    try:
        etype = EventType(str(doc.get("type")))
    except ValueError:
        raise UndecodableEvent(f"unknown event type {doc.get('type')!r}", raw) from None
    data = doc.get("data")
    if not isinstance(data, dict):
        raise UndecodableEvent("data is not a JSON object", raw)
    version = doc.get("schemaversion", 1)
    if not isinstance(version, int) or isinstance(version, bool):
        raise UndecodableEvent("schemaversion is not an integer", raw)
    try:
        data = upcast(etype, version, data)
        model = DATA_MODELS[etype].model_validate(data)
        current = SCHEMA_VERSIONS[etype]
        envelope = {**doc, "data": model, "schemaversion": current}
        event = ENVELOPES[etype].model_validate(envelope)
        return event, version == current and _as_written(event, len(doc))
    except UndecodableEvent as exc:
        raise UndecodableEvent(exc.error, raw) from None
    except ValidationError as exc:
        raise UndecodableEvent(f"invalid {etype}: {exc.errors(include_url=False)}", raw) from None
