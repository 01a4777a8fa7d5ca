"""``taskflow audit``: check the log's hash chain, make keys, verify signed bundles."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Annotated

import orjson
import typer

from events import audit
from events.chain import ChainCheck
from events.settings import get_settings

audit_app = typer.Typer(no_args_is_help=True, help="Tamper evidence: hash chain and bundles.")


async def check_log(*, bootstrap: str, topic: str, task: uuid.UUID | None,
                    archive_dir: str = "") -> ChainCheck:
    """Walk every committed record of ``topic`` (after its archive) and check each
    task's chain."""
    from projector.replay import read_records

    check = ChainCheck(task=task)
    async for r in read_records(bootstrap=bootstrap, topic=topic, progress=True,
                                archive_dir=archive_dir):
        check.feed(r.partition, r.offset, r.value)
    return check


@audit_app.command("verify")
def verify(task: Annotated[str | None, typer.Option(help="only this task id")] = None) -> None:
    """Walk the log and report every break of the hash chain with its coordinates
    (JSON lines on stdout); exit 1 if there is any."""
    try:
        tid = uuid.UUID(task) if task else None
    except ValueError:
        raise typer.BadParameter(f"not a task id: {task!r}", param_hint="--task") from None
    s = get_settings()
    check = asyncio.run(check_log(bootstrap=s.kafka_bootstrap, topic=s.topic, task=tid,
                                  archive_dir=s.archive_dir))
    for b in check.breaks:
        sys.stdout.write(orjson.dumps(b.as_dict()).decode() + "\n")
    print(f"{check.records} task event(s), {check.chained} chained, "
          f"{len(check.breaks)} break(s)", file=sys.stderr)
    raise typer.Exit(1 if check.breaks else 0)


@audit_app.command("keygen")
def keygen(out: Annotated[Path, typer.Option(help="private key file to write (PEM)")]) -> None:
    """Make the deployment's Ed25519 signing key: OUT (for TASKFLOW_AUDIT_SIGNING_KEY) and
    OUT.pub (hand it to auditors)."""
    if out.exists():
        raise typer.BadParameter(f"{out} exists; refusing to overwrite a key", param_hint="--out")
    pub = audit.generate(out)
    print(f"private key {out}, public key {pub}", file=sys.stderr)


@audit_app.command("verify-bundle")
def verify_bundle(
    bundle: Annotated[Path, typer.Argument(help="a bundle from GET /tasks/{id}/audit")],
    public_key: Annotated[Path, typer.Option(help="the deployment's public key (PEM)")],
) -> None:
    """Check a bundle offline, with only the public key: signature and hash chain."""
    try:
        key = audit.load_public(str(public_key))
    except audit.BadKey as exc:
        raise typer.BadParameter(str(exc), param_hint="--public-key") from None
    try:
        doc = orjson.loads(bundle.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {bundle}: {exc}") from None
    problems = audit.verify_bundle(doc, key)
    for p in problems:
        print(p)
    if problems:
        raise typer.Exit(1)
    print(f"OK: {len(doc['events'])} event(s) of task {doc['task_id']}, "
          f"signed by key {doc['key_id']}")
