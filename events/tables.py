"""The read-model schema (SQLAlchemy Core). Alembic migrations are written against it.

* ``tasks``              current state of every task (the fold of its events)
* ``task_events``        the journal: every event, in log order, with its position
* ``task_changes``       one row per visible change; ``position`` is the SSE id
* ``task_counts``        tasks per (partition, status), kept by triggers on ``tasks``
* ``projector_offsets``  checkpoint per (projection, topic, partition), same txn as the rows
* ``dead_letters``       log records the projector could not apply, with coordinates
* ``worker_pools``       the running workers' pools and types (live state, not a projection)
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

metadata = MetaData()

tasks = Table(
    "tasks",
    metadata,
    Column("task_id", Uuid, primary_key=True),
    Column("tenant", Text, nullable=True),
    Column("title", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("payload", JSONB, nullable=False),
    Column("result", JSONB, nullable=True),
    Column("error", Text, nullable=True),
    Column("attempt", Integer, nullable=False),
    Column("progress", Integer, nullable=False),
    Column("progress_message", Text, nullable=True),
    Column("priority", Integer, nullable=False),
    Column("max_attempts", Integer, nullable=True),
    Column("timeout_s", Float, nullable=True),
    Column("not_before", DateTime(timezone=True), nullable=True),
    Column("schedule_id", Uuid, nullable=True),  # the schedule that fired it (0007)
    Column("due_at", DateTime(timezone=True), nullable=True),  # that fire's due time
    Column("cancel_requested", Boolean, nullable=False),
    Column("dead_lettered", Boolean, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("created_by", Text, nullable=True),  # task.created's actor (0017)
    Column("partition", Integer, nullable=False),
    Column("last_offset", BigInteger, nullable=False),
    Index("tasks_status_created", "status", "created_at", "task_id"),
    Index("tasks_created", "created_at", "task_id"),
    Index("tasks_tenant_created", "tenant", "created_at", "task_id"),
    Index("tasks_type_created", "type", "created_at", "task_id"),
    Index("tasks_priority_created", "priority", "created_at", "task_id"),  # ?sort=priority
    # GET /schedules/{id}/runs: a schedule's fires, latest due time first.
    Index("tasks_schedule_due", "schedule_id", "due_at",
          postgresql_where=text("schedule_id IS NOT NULL")),
    # ?q= (ILIKE '%q%'): pg_trgm's trigram index, no full scan.
    Index("tasks_title_trgm", "title", postgresql_using="gin",
          postgresql_ops={"title": "gin_trgm_ops"}),
)

# Tasks per (partition, status), kept by statement-level triggers on ``tasks`` (migration
# 0006) in the transaction that writes the tasks: /stats sums these rows.
task_counts = Table(
    "task_counts",
    metadata,
    Column("partition", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("n", BigInteger, nullable=False),
    PrimaryKeyConstraint("partition", "status"),
)

task_events = Table(
    "task_events",
    metadata,
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("task_id", Uuid, nullable=False),
    Column("event_id", Uuid, nullable=False),
    Column("type", Text, nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("event", JSONB, nullable=False),
    PrimaryKeyConstraint("partition", "offset"),
    Index("task_events_task", "task_id", "partition", "offset"),
)

task_changes = Table(
    "task_changes",
    metadata,
    Column("position", BigInteger, Identity(always=False), primary_key=True),
    Column("task_id", Uuid, nullable=False),
    Column("tenant", Text, nullable=True),
    Column("type", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("progress", Integer, nullable=False),
    Column("summary", Text, nullable=True),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("task_changes_task", "task_id", "position"),
    Index("task_changes_time", "recorded_at"),
    # /stats throughput: terminal changes by time.
    Index("task_changes_finished", "time",
          postgresql_where=text("type IN ('task.done', 'task.failed', 'task.cancelled')")),
)

projector_offsets = Table(
    "projector_offsets",
    metadata,
    Column("projection", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The consumer's position when it was last idle: past Kafka's transaction markers,
    # which take offsets but carry no event. Used to report lag, never to seek.
    Column("consumed_upto", BigInteger, nullable=True),
    PrimaryKeyConstraint("projection", "topic", "partition"),
)

# API keys: ``tfk_<key_id>_<secret>``; only a SHA-256 of the secret is stored.
api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("tenant", Text, nullable=False),
    Column("secret_hash", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    # admin > submitter > reader (api/roles.py); keys from before roles are admin.
    Column("role", Text, nullable=False, server_default="submitter"),
    CheckConstraint("role IN ('admin', 'submitter', 'reader')", name="api_keys_role"),
)

# Dashboard logins (POST /session): only a SHA-256 of the cookie's token is stored. A
# login is good until ``expires_at`` and while its key is not revoked.
api_logins = Table(
    "api_sessions",
    metadata,
    Column("token_hash", Text, primary_key=True),
    Column("key_id", Text, nullable=False),
    Column("tenant", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("api_sessions_key_id", "key_id"),
    Index("api_sessions_expires_at", "expires_at"),
)

# Everything at or below ``trimmed_upto`` has been removed from task_changes; an SSE
# client resuming from there gets ``event: reset``.
change_retention = Table(
    "change_retention",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("trimmed_upto", BigInteger, nullable=False),
    Column("trimmed_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("id = 1", name="change_retention_single_row"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigInteger, Identity(always=False), primary_key=True),
    Column("projection", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("key", LargeBinary, nullable=True),
    Column("raw", LargeBinary, nullable=True),
    Column("error", Text, nullable=False),
    # Where it was refused: "decode" (not a TaskFlow event), "fold" (the fold raised) or
    # "write" (Postgres refused a row it makes).
    Column("reason", Text, nullable=False, server_default="decode"),
    Column("parked_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("dead_letters_coords", "projection", "topic", "partition", "offset", unique=True),
)

# The schedules projection (migration 0007): the fold of the schedule topic, written by
# the scheduler with its checkpoint (projection "schedules" in projector_offsets).
schedules = Table(
    "schedules",
    metadata,
    Column("schedule_id", Uuid, primary_key=True),
    Column("tenant", Text, nullable=True),
    Column("name", Text, nullable=False),
    Column("cron", Text, nullable=True),
    Column("every_s", Float, nullable=True),
    Column("timezone", Text, nullable=False),
    Column("task", JSONB, nullable=False),
    Column("overlap", Text, nullable=False),
    Column("catchup", Text, nullable=False),
    Column("paused", Boolean, nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("anchor", DateTime(timezone=True), nullable=False),
    Column("next_run_at", DateTime(timezone=True), nullable=True),
    Column("last_due_at", DateTime(timezone=True), nullable=True),
    Column("last_task_id", Uuid, nullable=True),
    Column("fires", BigInteger, nullable=False),
    Column("skips", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("last_offset", BigInteger, nullable=False),
    Index("schedules_tenant_created", "tenant", "created_at", "schedule_id"),
)

# The journal of the schedule topic (its rows written by the scheduler with the
# ``schedules`` rows): what ``GET /schedules/{id}?as_of=`` folds.
schedule_events = Table(
    "schedule_events",
    metadata,
    Column("partition", Integer, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("schedule_id", Uuid, nullable=False),
    Column("type", Text, nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("event", JSONB, nullable=False),
    PrimaryKeyConstraint("partition", "offset"),
    Index("schedule_events_schedule", "schedule_id", "partition", "offset"),
)

# The read model's retention rule (projector/retention.py, migration 0011): the cutoff it
# last applied per projection, and how many finished tasks it removed in all.
retention = Table(
    "retention",
    metadata,
    Column("projection", Text, primary_key=True),
    Column("cutoff", DateTime(timezone=True), nullable=False),
    Column("expired", BigInteger, nullable=False),
    Column("swept_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Erasure (events/crypto.py, migration 0011): each task's data key, wrapped with the
# master key. Deleting the row erases the task's sealed payload and result everywhere.
task_keys = Table(
    "task_keys",
    metadata,
    Column("task_id", Uuid, primary_key=True),
    Column("tenant", Text, nullable=True),
    Column("wrapped", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("task_keys_tenant", "tenant"),
)

# The workflows projection (migration 0010): the fold of the workflow topic, written by
# the coordinator with its checkpoint (projection "workflows" in projector_offsets).
workflows = Table(
    "workflows",
    metadata,
    Column("workflow_id", Uuid, primary_key=True),
    Column("tenant", Text, nullable=True),
    Column("name", Text, nullable=False),
    Column("on_failure", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("round", Integer, nullable=False),
    Column("cancel_requested", Boolean, nullable=False),
    Column("finished_round", Integer, nullable=True),
    Column("digest", Text, nullable=True),
    Column("spec", JSONB, nullable=False),  # the tasks as submitted, in order
    Column("nodes", JSONB, nullable=False),  # key -> node state
    Column("summary", JSONB, nullable=False),  # node status -> count
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("partition", Integer, nullable=False),
    Column("last_offset", BigInteger, nullable=False),
    Index("workflows_tenant_created", "tenant", "created_at", "workflow_id"),
)

# The running workers (migration 0013, events/pool_registry.py): each writes its pool and
# the types it serves every TASKFLOW_WORKER_POOL_REFRESH_S, and deletes its row at a clean
# stop; a row past expires_at is a worker gone (killed). Live state, not a projection of
# the log: `projections rebuild` and `verify` leave it alone.
worker_pools = Table(
    "worker_pools",
    metadata,
    Column("worker_id", Text, primary_key=True),
    Column("pool", Text, nullable=False),
    Column("types", ARRAY(Text), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("seen_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)
