"""Log archives: older records of the topic in compressed, checksummed JSON lines files.

``taskflow log archive --before DATE --to DIR`` writes, per partition, the records not
archived yet whose broker time is before DATE, to ``DIR/<topic>/p<P>-<first>-<last>.jsonl.gz``
(one JSON object a line: ``partition``, ``offset``, ``timestamp_ms``, ``key`` and
``value`` as base64), and lists each file with its SHA-256 in ``DIR/<topic>/manifest.json``.
Reading checks every file against its checksum first: a changed archive is refused, not
read. With ``TASKFLOW_ARCHIVE_DIR`` set, replay, verify, rebuild and ``audit verify``
read the archive and then the live log from where the archive ends, so a topic whose
older records Kafka's retention deleted still rebuilds in full.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from events.log.records import Record

MANIFEST = "manifest.json"


class ArchiveCorrupt(Exception):
    """An archive file does not match the checksum its manifest lists."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"archive {path}: {reason}")
        self.path, self.reason = path, reason


def _folder(root: str, topic: str) -> Path:
    return Path(root) / topic


def manifest(root: str, topic: str) -> list[dict[str, Any]]:
    path = _folder(root, topic) / MANIFEST
    if not path.exists():
        return []
    files = orjson.loads(path.read_bytes())["files"]
    assert isinstance(files, list)
    return files


def archived_upto(root: str, topic: str) -> dict[int, int]:
    """Per partition that has an archive, the offset below which it holds every record
    (transaction markers take offsets too, so this can be past the last record's)."""
    out: dict[int, int] = {}
    for f in manifest(root, topic):
        out[f["partition"]] = max(out.get(f["partition"], 0), f["upto"], f["last"] + 1)
    return out


def write(root: str, topic: str, partition: int, records: Iterable[Record], *,
          upto: int) -> dict[str, Any] | None:
    """Archive one partition's records (in offset order), which are all it has below
    offset ``upto``; the manifest entry, or None if there were none."""
    rows = [orjson.dumps({"partition": r.partition, "offset": r.offset,
                          "timestamp_ms": r.timestamp_ms,
                          "key": base64.b64encode(r.key).decode() if r.key is not None else None,
                          "value": (base64.b64encode(r.value).decode()
                                    if r.value is not None else None)})
            for r in records]
    if not rows:
        return None
    first, last = orjson.loads(rows[0])["offset"], orjson.loads(rows[-1])["offset"]
    folder = _folder(root, topic)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"p{partition}-{first}-{last}.jsonl.gz"
    blob = gzip.compress(b"\n".join(rows) + b"\n", mtime=0)
    (folder / name).write_bytes(blob)
    entry = {"name": name, "partition": partition, "first": first, "last": last,
             "upto": upto, "count": len(rows), "sha256": hashlib.sha256(blob).hexdigest()}
    files = [*manifest(root, topic), entry]
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_bytes(orjson.dumps({"topic": topic, "files": files}, option=orjson.OPT_INDENT_2))
    tmp.replace(folder / MANIFEST)  # the file first, then the manifest that names it
    return entry


def check(root: str, topic: str) -> None:
    """Raise ``ArchiveCorrupt`` for the first file that is missing or changed."""
    folder = _folder(root, topic)
    for f in manifest(root, topic):
        path = folder / f["name"]
        if not path.exists():
            raise ArchiveCorrupt(path, "missing")
        if hashlib.sha256(path.read_bytes()).hexdigest() != f["sha256"]:
            raise ArchiveCorrupt(path, "checksum does not match the manifest")


def read(root: str, topic: str, partition: int) -> Iterator[Record]:
    """One partition's archived records, in offset order."""
    folder = _folder(root, topic)
    for f in sorted((f for f in manifest(root, topic) if f["partition"] == partition),
                    key=lambda f: f["first"]):
        for line in gzip.decompress((folder / f["name"]).read_bytes()).splitlines():
            d = orjson.loads(line)
            yield Record(topic=topic, partition=d["partition"], offset=d["offset"],
                         key=base64.b64decode(d["key"]) if d["key"] is not None else None,
                         value=base64.b64decode(d["value"]) if d["value"] is not None else None,
                         timestamp_ms=d["timestamp_ms"])
