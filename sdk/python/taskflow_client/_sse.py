"""Server-Sent Events: bytes in, events out (the WHATWG parsing rules we need)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SSE:
    event: str
    data: str
    id: str | None


class SSEParser:
    """Feed it chunks as they arrive; it returns the events they complete."""

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SSE]:
        self._buf += chunk
        out: list[SSE] = []
        *lines, self._buf = self._buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace")
            if not line:
                if self._data or self._event:
                    out.append(SSE(self._event or "message", "\n".join(self._data), self._id))
                self._event, self._data = "", []
                continue
            if line.startswith(":"):
                continue  # a comment: the heartbeat
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
            elif name == "id" and "\x00" not in value:
                self._id = value
        return out
