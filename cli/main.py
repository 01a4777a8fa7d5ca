"""The ``taskflow`` command line."""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import typer
import uvloop

from api.roles import DEFAULT_ROLE, ROLES
from cli import erasure as cli_erasure
from cli.audit import audit_app
from cli.services import dev_profile, run_all, serve, setup_logging, supervise
from events.models import ACTOR_MAX
from events.settings import get_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="TaskFlow: event-sourced tasks.")
stack_app = typer.Typer(no_args_is_help=True, help="The local Kafka and Postgres under .stack/.")
app.add_typer(stack_app, name="stack")
app.add_typer(audit_app, name="audit")
log_app = typer.Typer(no_args_is_help=True, help="The log itself: archives.")
app.add_typer(log_app, name="log")


@log_app.command("archive")
def log_archive(
    before: Annotated[str, typer.Option(help="archive records older than this (RFC 3339)")],
    to: Annotated[str, typer.Option(help="folder of the archive (TASKFLOW_ARCHIVE_DIR)")],
) -> None:
    """Write older records to compressed, checksummed JSON lines files (docs/audit.md)."""
    from cli.archive import archive_log

    when = _parse_time(before)
    assert when is not None
    counts = asyncio.run(archive_log(get_settings(), before=when, to=to))
    print(f"archived {sum(counts.values())} record(s) of {len(counts)} partition(s) to {to}",
          file=sys.stderr)


def _version(show: bool) -> None:
    if show:
        from events import __version__

        print(f"taskflow {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")]
         = False) -> None:
    """TaskFlow: event-sourced tasks."""


@stack_app.command("up")
def stack_up(brokers: Annotated[int | None, typer.Option(
        min=1, help="Kafka nodes (each broker and controller); ports from "
        "TASKFLOW_KAFKA_PORTS and TASKFLOW_KAFKA_CONTROLLER_PORTS")] = None) -> None:
    """Start Kafka and Postgres (idempotent), create the topic and the database."""
    import os

    from cli.stack import Stack

    if brokers is not None:  # the default bootstrap (every node) follows it
        os.environ["TASKFLOW_STACK_BROKERS"] = str(brokers)
        get_settings.cache_clear()
    s = get_settings()
    st = Stack(s)
    st.pg_up()
    st.kafka_up()
    # On a cluster the topics get 3 copies, of which 2 must hold each write.
    rf = max(s.replication_factor, min(3, s.stack_brokers))
    asyncio.run(_bootstrap(rf, max(s.min_insync_replicas, rf - 1)))


async def _bootstrap(replication_factor: int, min_insync_replicas: int) -> None:
    from events.db import ensure_database

    s = get_settings()
    if await ensure_database(s.database_url):
        print(f"stack: created database {s.database_url.rsplit('/', 1)[-1]}", file=sys.stderr)
    await _ensure_topics("stack", attempts=60, replication_factor=replication_factor,
                         min_insync_replicas=min_insync_replicas)


async def _ensure_topics(who: str, *, attempts: int, replication_factor: int | None = None,
                         min_insync_replicas: int | None = None) -> None:
    """Create the event topic, its dead-letter, schedule and webhook topics if missing,
    retrying twice a second
    (the broker may still be electing itself controller); raises the last error."""
    from events import webhooks
    from events.log import ensure_topics
    from events.schedules import schedule_topic
    from events.workflows import workflow_topic

    s = get_settings()
    for attempt in range(attempts):
        try:
            created = await ensure_topics(
                s.kafka_bootstrap, s.topic, s.partitions,
                replication_factor=replication_factor or s.replication_factor,
                min_insync_replicas=min_insync_replicas or s.min_insync_replicas,
                also=[schedule_topic(s.topic), webhooks.topic_for(s.topic),
                      workflow_topic(s.topic)])
            break
        except Exception:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5)
    for name in created:
        print(f"{who}: created topic {name} (kept forever)", file=sys.stderr)


@stack_app.command("down")
def stack_down() -> None:
    """Stop Kafka and Postgres (data stays in .stack/)."""
    from cli.stack import Stack

    st = Stack(get_settings())
    st.kafka_down()
    st.pg_down()


@stack_app.command("status")
def stack_status() -> None:
    """Show whether Kafka and Postgres are running."""
    from cli.stack import Stack

    for k, v in Stack(get_settings()).status().items():
        print(f"{k:9} {v}")


@app.command()
def migrate() -> None:
    """Run the Alembic migrations to head, and create the topic and its dead-letter topic.

    Kafka out of reach is a warning, not a failure: the schema is what this command is
    for, and the worker creates the dead-letter topic itself when it starts.
    """
    from events.db import migrate as run

    run(get_settings().database_url)
    try:
        asyncio.run(_ensure_topics("migrate", attempts=20))
    except Exception as exc:
        print(f"migrate: topics not checked, Kafka refused or is out of reach: {exc!r}",
              file=sys.stderr)


@app.command()
def api(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port")] = None,
    workers: Annotated[int, typer.Option(help="API processes (one per core is a good start)")]
    = 1,
    reuse_port: Annotated[bool, typer.Option(hidden=True)] = False,
) -> None:
    """Run the HTTP API (uvicorn).

    With ``--workers N`` it starts N processes, each with its own listening socket on
    the same port (SO_REUSEPORT), so the kernel spreads connections across them. With
    one shared socket (uvicorn's own ``--workers``) whichever process woke first took a
    burst of new connections, and 8 client connections often all landed on one process.
    """
    import uvicorn

    s = get_settings()
    setup_logging(s.log_level)
    host, port = host or s.api_host, port or s.api_port
    if workers > 1:
        argv = [sys.executable, "-m", "cli.main", "api", "--host", host, "--port", str(port),
                "--workers", "1", "--reuse-port"]
        raise typer.Exit(supervise({f"api{i}": argv for i in range(workers)},
                                   grace_s=s.shutdown_grace_s))
    # uvloop and httptools explicitly: uvicorn's "auto" silently falls back to asyncio and
    # h11 (about 40% slower on POST /tasks) when they are missing; this fails loudly.
    opts: dict[str, object] = {"log_level": s.log_level, "access_log": False,
                               "timeout_graceful_shutdown": 5, "loop": "uvloop",
                               "http": "httptools"}
    if s.api_socket_sndbuf or reuse_port:
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if s.api_socket_sndbuf:  # accepted sockets inherit it from the listening one
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, s.api_socket_sndbuf)
        sock.bind((host, port))
        # No listen() here: uvicorn listens once the app has started. A listening
        # SO_REUSEPORT socket gets its share of new connections at once, and the ones
        # sent to a process still starting up would wait for it.
        # The socket object itself, not fd=: uvicorn rebuilds an fd as an AF_UNIX socket,
        # and asyncio then leaves Nagle on for the connections, which halved single POSTs.
        uvicorn.Server(uvicorn.Config("api.main:app", **opts)).run(  # type: ignore[arg-type]
            sockets=[sock])
    else:
        uvicorn.run("api.main:app", host=host, port=port, **opts)  # type: ignore[arg-type]


@app.command()
def worker(
    burst: Annotated[bool, typer.Option(help="exit once there is nothing left to do")] = False,
    types: Annotated[str | None, typer.Option(
        help="serve only these task types, as their own pool (comma-separated); each must "
             "be in TASKFLOW_POOLED_TYPES")] = None,
) -> None:
    """Run a worker: consumes the log as one member of the worker group."""
    from events import pools
    from worker.service import Worker

    s = get_settings()
    if types is not None:
        s = s.model_copy(update={"worker_types": types})
    unpooled = set(pools.type_list(s.worker_types)) - set(pools.type_list(s.pooled_types))
    if unpooled:  # the default pool would run them too
        raise typer.BadParameter(
            f"{', '.join(sorted(unpooled))} must be listed in TASKFLOW_POOLED_TYPES (on every "
            f"worker) to be served by a pool of their own", param_hint="--types")
    setup_logging(s.log_level)
    uvloop.run(serve(lambda: Worker(s), name="worker", burst=burst))


@app.command()
def projector(
    burst: Annotated[bool, typer.Option(help="exit once the log is drained")] = False,
) -> None:
    """Run a projector: folds the log into the Postgres read model."""
    from projector.service import Projector
    from projector.webhooks import WebhookProjector, WithWebhooks

    s = get_settings()
    setup_logging(s.log_level)
    uvloop.run(serve(lambda: WithWebhooks(Projector(s), WebhookProjector(s)), name="projector",
                     burst=burst))


@app.command()
def notifier(
    burst: Annotated[bool, typer.Option(help="exit once nothing is left to deliver")] = False,
) -> None:
    """Run a notifier: delivers task events to webhooks, as one member of its group."""
    from notifier.service import Notifier

    s = get_settings()
    setup_logging(s.log_level)
    uvloop.run(serve(lambda: Notifier(s), name="notifier", burst=burst))


@app.command()
def scheduler(
    burst: Annotated[bool, typer.Option(help="exit once the log is drained")] = False,
) -> None:
    """Run a scheduler: fires schedules as one member of the scheduler group."""
    from scheduler.service import Scheduler

    s = get_settings()
    setup_logging(s.log_level)
    uvloop.run(serve(lambda: Scheduler(s), name="scheduler", burst=burst))


@app.command()
def coordinator(
    burst: Annotated[bool, typer.Option(help="exit once nothing is left to do")] = False,
) -> None:
    """Run a coordinator: runs workflows as one member of the coordinator group."""
    from coordinator.service import Coordinator

    s = get_settings()
    setup_logging(s.log_level)
    uvloop.run(serve(lambda: Coordinator(s), name="coordinator", burst=burst))


topics_app = typer.Typer(no_args_is_help=True, help="The event topic.")
app.add_typer(topics_app, name="topics")


@topics_app.command("grow")
def topics_grow(partitions: Annotated[int, typer.Option(
        min=1, help="the partition count to grow the event topic to")]) -> None:
    """Add partitions to the event topic; every task keeps the partition it is on."""
    from events.log import grow_partitions

    s = get_settings()
    try:
        before = asyncio.run(grow_partitions(s.kafka_bootstrap, s.topic, partitions))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--partitions") from None
    if before == partitions:
        print(f"topics: {s.topic} already has {partitions} partitions", file=sys.stderr)
    else:
        print(f"topics: {s.topic} grown from {before} to {partitions} partitions",
              file=sys.stderr)


dlq_app = typer.Typer(no_args_is_help=True, help="Dead-lettered tasks.")
app.add_typer(dlq_app, name="dlq")


ActorOpt = Annotated[str | None, typer.Option(
    help="who runs this: recorded as the actor of the events it writes "
    "[default: cli:<login name>]")]


def _actor(value: str | None) -> str:
    """``--actor`` checked, or ``cli:<login name>`` without it."""
    if value is None:
        try:
            return f"cli:{getpass.getuser()}"
        except (KeyError, OSError):  # no login name (a container's bare uid)
            return f"cli:uid-{os.getuid()}"
    if not value.strip() or len(value) > ACTOR_MAX or not value.isprintable():
        raise typer.BadParameter(f"give 1 to {ACTOR_MAX} printable characters",
                                 param_hint="--actor")
    return value


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"not an RFC 3339 time: {value!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


@dlq_app.command("list")
def dlq_list(
    type_: Annotated[str | None, typer.Option("--type", help="only this task type")] = None,
    since: Annotated[str | None, typer.Option(help="finished at or after (RFC 3339)")] = None,
) -> None:
    """List dead-lettered tasks as JSON lines."""
    from cli.dlq import dead_tasks

    rows = asyncio.run(dead_tasks(get_settings(), type_=type_, since=_parse_time(since)))
    for r in rows:
        print(orjson.dumps(r, default=str).decode())
    print(f"{len(rows)} dead-lettered task(s)", file=sys.stderr)


@dlq_app.command("redrive")
def dlq_redrive(
    type_: Annotated[str | None, typer.Option("--type", help="only this task type")] = None,
    since: Annotated[str | None, typer.Option(help="finished at or after (RFC 3339)")] = None,
    actor: ActorOpt = None,
) -> None:
    """Emit task.redriven for every matching dead-lettered task; they run again."""
    from cli.dlq import dead_tasks, redrive

    who = _actor(actor)
    s = get_settings()
    rows = asyncio.run(dead_tasks(s, type_=type_, since=_parse_time(since)))
    n = asyncio.run(redrive(s, rows, reason="dlq redrive", actor=who))
    print(f"redriven {n} task(s)", file=sys.stderr)


@app.command()
def replay(
    task: Annotated[str | None, typer.Option(help="only this task id")] = None,
    type_: Annotated[list[str] | None, typer.Option("--type", help="only these event types")]
    = None,
    since: Annotated[str | None, typer.Option(help="from this time (RFC 3339)")] = None,
    until: Annotated[str | None, typer.Option(help="up to this time (RFC 3339)")] = None,
    from_position: Annotated[str | None, typer.Option(
        help="start at PARTITION:OFFSET[,PARTITION:OFFSET...]")] = None,
    actor: Annotated[list[str] | None, typer.Option(
        help="only events of these actors (API key ids, anonymous, cli:<name>)")] = None,
) -> None:
    """Print the log as CloudEvents JSON lines, straight from Kafka. A command's event
    carries its ``actor``; the events services write on their own have none."""
    from projector.replay import ReplayFilter, parse_positions
    from projector.replay import replay as run_replay

    try:
        positions = parse_positions(from_position)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    flt = ReplayFilter(task=task, types=frozenset(type_ or ()), since=_parse_time(since),
                       until=_parse_time(until), actors=frozenset(actor or ()),
                       from_position=positions)
    s = get_settings()

    async def go() -> int:
        n = 0
        out = sys.stdout
        reveal = await cli_erasure.revealer(s)  # sealed fields: plaintext or erased
        async for r, ev, err in run_replay(bootstrap=s.kafka_bootstrap, topic=s.topic, flt=flt,
                                           archive_dir=s.archive_dir):
            pos = {"partition": r.partition, "offset": r.offset}
            if ev is None:
                doc = {"position": pos, "undecodable": err,
                       "raw": (r.value or b"").decode("utf-8", "backslashreplace")}
            else:
                doc = {**await reveal(ev.model_dump(mode="json")), "position": pos}
            out.write(orjson.dumps(doc).decode() + "\n")
            n += 1
        out.flush()
        return n

    n = asyncio.run(go())
    print(f"{n} event(s)", file=sys.stderr)


@app.command()
def erase(
    task: Annotated[str | None, typer.Option(help="erase this task's payload and result")]
    = None,
    tenant: Annotated[str | None, typer.Option(help="erase those of every task of a tenant")]
    = None,
    actor: ActorOpt = None,
) -> None:
    """Crypto-shred: delete the data keys, then append task.erased for each task."""
    if (task is None) == (tenant is None):
        raise typer.BadParameter("give exactly one of --task and --tenant")
    try:
        tid = uuid.UUID(task) if task else None
    except ValueError:
        raise typer.BadParameter(f"not a task id: {task!r}", param_hint="--task") from None
    n = asyncio.run(cli_erasure.erase(get_settings(), task_id=tid, tenant=tenant,
                                      actor=_actor(actor)))
    print(f"erased {n} task(s)", file=sys.stderr)


projections_app = typer.Typer(no_args_is_help=True, help="Rebuild and verify read models.")
app.add_typer(projections_app, name="projections")


@projections_app.command("verify")
def projections_verify() -> None:
    """Fold the whole log and compare it with the live read model; exit 1 on any difference."""
    from projector import schedules
    from projector.maintenance import verify
    from projector.webhooks import verify as verify_webhooks

    diffs, n = asyncio.run(verify(get_settings(), progress=True))
    sdiffs, sn = asyncio.run(schedules.verify(get_settings()))
    diffs, n = diffs + sdiffs, n + sn
    from projector import workflows

    wdiffs, wn = asyncio.run(workflows.verify(get_settings()))
    diffs, n = diffs + wdiffs, n + wn
    for d in diffs:
        print(str(d))
    hook_diffs = asyncio.run(verify_webhooks(get_settings()))
    for line in hook_diffs:
        print(line)
    bad = len(diffs) + len(hook_diffs)
    print(f"verified {n} event(s): {bad} difference(s)", file=sys.stderr)
    raise typer.Exit(1 if bad else 0)


@projections_app.command("rebuild")
def projections_rebuild() -> None:
    """Replay the log into a shadow schema, catch up with the live head, swap atomically."""
    from projector.maintenance import RebuildIncomplete, rebuild

    tty = sys.stderr.isatty()

    def show(done: int, total: int, secs: float) -> None:
        rate = done / max(secs, 1e-6)
        lag = max(0, total - done)
        eta = lag / rate if rate else 0.0
        line = (f"rebuild: {done}/{total} events, {rate:,.0f} events/s, lag {lag}, "
                f"ETA {eta:,.0f}s")
        print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr,
              flush=True)

    try:
        stats = asyncio.run(rebuild(get_settings(), on_progress=show))
    except RebuildIncomplete as exc:
        print(f"\nrebuild: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    print(f"\nrebuild: {stats.events} event(s) in {stats.seconds:.1f}s, swapped in",
          file=sys.stderr)
    from projector.webhooks import rebuild as rebuild_webhooks

    rows = asyncio.run(rebuild_webhooks(get_settings()))
    print(f"rebuild: {rows} webhook and delivery row(s) refolded, swapped in", file=sys.stderr)
    from projector import schedules

    n = asyncio.run(schedules.rebuild(get_settings()))
    print(f"rebuild: schedules from {n} event(s)", file=sys.stderr)
    from projector import workflows

    n = asyncio.run(workflows.rebuild(get_settings()))
    print(f"rebuild: workflows from {n} event(s)", file=sys.stderr)


@projections_app.command("dead-letters")
def projections_dead_letters(
    limit: Annotated[int | None, typer.Option(help="at most this many (default: all)")] = None,
) -> None:
    """List the log records the projector parked, oldest first, as JSON lines: coordinates
    (projection, topic, partition, offset), key, reason (decode, fold or write), error,
    parked_at and the record's bytes."""
    from events import queries

    async def read() -> list[dict[str, Any]]:
        async with queries.short_engine(get_settings().database_url) as engine:
            return await queries.parked_records(engine, limit=limit)

    rows = asyncio.run(read())
    for r in rows:
        print(orjson.dumps(r, default=str).decode())
    print(f"{len(rows)} parked record(s)", file=sys.stderr)


schedules_app = typer.Typer(no_args_is_help=True,
                            help="Schedules, through the HTTP API (--url, TASKFLOW_API_KEY).")
app.add_typer(schedules_app, name="schedules")
UrlOpt = Annotated[str | None, typer.Option(help="API base URL (default: TASKFLOW_API_URL, "
                                                 "or the configured host and port)")]


def _api(method: str, path: str, url: str | None, body: dict[str, Any] | None = None) -> None:
    from cli.schedules import ApiError, base_url, call

    try:
        doc = call(base_url(get_settings(), url), method, path, body)
    except ApiError as exc:
        print(f"error {exc.status}: {exc.detail}", file=sys.stderr)
        raise typer.Exit(1) from None
    except OSError as exc:
        print(f"cannot reach the API: {exc}", file=sys.stderr)
        raise typer.Exit(1) from None
    items = doc.get("items") if isinstance(doc, dict) else None
    for item in items if items is not None else ([doc] if doc is not None else []):
        print(orjson.dumps(item, default=str).decode())
    if isinstance(doc, dict) and doc.get("next_cursor"):  # a list: the next page
        base = path.split("?cursor=")[0].split("&cursor=")[0]
        _api(method, f"{base}{'&' if '?' in base else '?'}cursor={doc['next_cursor']}", url)


@schedules_app.command("list")
def schedules_list(url: UrlOpt = None) -> None:
    """List schedules as JSON lines (next and last run, last run's status)."""
    _api("GET", "/schedules", url)


@schedules_app.command("create")
def schedules_create(
    name: Annotated[str, typer.Option(help="a name for people")],
    title: Annotated[str, typer.Option(help="title of each fired task")],
    cron: Annotated[str | None, typer.Option(help="cron expression (5 or 6 fields)")] = None,
    every_s: Annotated[float | None, typer.Option(help="interval in seconds")] = None,
    timezone: Annotated[str, typer.Option(help="IANA zone the cron is read in")] = "UTC",
    type_: Annotated[str, typer.Option("--type", help="task type (handler)")] = "echo",
    payload: Annotated[str, typer.Option(help="task payload, a JSON object")] = "{}",
    overlap: Annotated[str, typer.Option(help="allow | skip")] = "allow",
    catchup: Annotated[str, typer.Option(help="none | latest | all")] = "none",
    url: UrlOpt = None,
) -> None:
    """Create a schedule; prints {schedule_id, next_run_at}."""
    try:
        body_payload = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise typer.BadParameter("--payload must be a JSON object") from None
    body: dict[str, Any] = {"name": name, "timezone": timezone, "overlap": overlap,
                            "catchup": catchup, "task": {"title": title, "type": type_,
                                                         "payload": body_payload}}
    if cron is not None:
        body["cron"] = cron
    if every_s is not None:
        body["every_s"] = every_s
    _api("POST", "/schedules", url, body)


def _schedule_action(action: str) -> Callable[..., None]:
    def command(schedule_id: Annotated[str, typer.Argument(help="the schedule id")],
                url: UrlOpt = None) -> None:
        if action == "delete":
            _api("DELETE", f"/schedules/{schedule_id}", url)
        else:
            _api("POST", f"/schedules/{schedule_id}:{action}", url)

    command.__doc__ = {"pause": "Pause a schedule.", "resume": "Resume a paused schedule.",
                       "trigger": "Fire the schedule's task now, once.",
                       "delete": "Delete a schedule."}[action]
    return command


for _action in ("pause", "resume", "trigger", "delete"):
    schedules_app.command(_action)(_schedule_action(_action))


keys_app = typer.Typer(no_args_is_help=True, help="API keys (TASKFLOW_AUTH=true).")
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="the tenant this key acts for")],
    role: Annotated[str, typer.Option(
        help="admin, submitter or reader: what the key may do (docs/security.md)")
    ] = DEFAULT_ROLE,
) -> None:
    """Create a key; it is printed once and stored only as a hash."""
    from cli.keys import create

    if not tenant.strip():
        raise typer.BadParameter("tenant must not be empty")
    if role not in ROLES:
        raise typer.BadParameter(f"role must be one of {', '.join(ROLES)}")
    print(asyncio.run(create(get_settings(), tenant, role)))


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="the key, or its id")]) -> None:
    """Revoke a key (takes effect within a few seconds on every API process)."""
    from cli.keys import revoke

    if not asyncio.run(revoke(get_settings(), key)):
        print("no such active key", file=sys.stderr)
        raise typer.Exit(1)
    print("revoked", file=sys.stderr)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (ids, tenants and roles; secrets are never stored)."""
    from cli.keys import listing

    for r in asyncio.run(listing(get_settings())):
        print(orjson.dumps(r, default=str).decode())


def _api_url() -> str:
    s = get_settings()
    return f"http://{s.api_host}:{s.api_port}"


Url = Annotated[str | None, typer.Option(
    envvar="TASKFLOW_URL", help="the API (default: http://TASKFLOW_API_HOST:TASKFLOW_API_PORT)")]
ApiKey = Annotated[str | None, typer.Option(envvar="TASKFLOW_API_KEY", help="API key")]


@app.command()
def submit(
    type: Annotated[str, typer.Option(help="the task type (handler name)")] = "echo",
    payload: Annotated[str, typer.Option(help="the payload, a JSON object")] = "{}",
    title: Annotated[str | None, typer.Option(help="default: the type")] = None,
    priority: Annotated[str | None, typer.Option(
        help="-100..100 (higher starts first) or low, normal, high, critical")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="default: a new one")] = None,
    delay_s: Annotated[float | None, typer.Option(help="start after this many seconds")]
    = None,
    run_at: Annotated[str | None, typer.Option(help="start at this RFC 3339 time")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="print the final state too")] = False,
    timeout: Annotated[float | None, typer.Option(help="for --wait, in seconds")] = None,
    url: Url = None, api_key: ApiKey = None,
) -> None:
    """Submit a task through the SDK; print it as JSON (with --wait, its end too)."""
    from cli import client

    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--payload") from None
    if not isinstance(body, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--payload")
    raise typer.Exit(client.submit(url or _api_url(), api_key, title=title or type,
                                   type_=type, payload=body,
                                   priority=client.priority_arg(priority),
                                   idempotency_key=idempotency_key, delay_s=delay_s,
                                   run_at=run_at, wait=wait, timeout=timeout))


@app.command()
def watch(
    status: Annotated[list[str] | None, typer.Option(help="only these statuses (repeat)")]
    = None,
    task_id: Annotated[list[str] | None, typer.Option(help="only these tasks (repeat)")]
    = None,
    after: Annotated[int | None, typer.Option(help="start after this change position")]
    = None,
    count: Annotated[int | None, typer.Option(help="stop after this many changes")] = None,
    url: Url = None, api_key: ApiKey = None,
) -> None:
    """Print every change as a JSON line as it happens; resumes by itself."""
    from cli import client

    raise typer.Exit(client.watch(url or _api_url(), api_key, status=status,
                                  task_id=task_id, after=after, count=count))


@app.command()
def run() -> None:
    """Run API, worker, projector, scheduler, notifier and coordinator together; a child
    that dies is restarted (Ctrl-C stops them all)."""
    note = dev_profile(os.environ)
    if note:
        print(note, file=sys.stderr, flush=True)
    raise typer.Exit(run_all(get_settings()))


if __name__ == "__main__":
    app()
