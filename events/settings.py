"""Settings, read once at start-up from ``TASKFLOW_*`` environment variables."""

from __future__ import annotations

from functools import cached_property, lru_cache
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from events import constants
from events.errors import ConfigError


class Settings(BaseSettings):
    """Every knob of TaskFlow. Defaults point at the local stack (`taskflow stack up`)."""

    model_config = SettingsConfigDict(env_prefix="TASKFLOW_", frozen=True, extra="ignore")

    # The local stack (`taskflow stack up`); bootstrap and URL default to it.
    stack_dir: str = ""  # default: <project>/.stack
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    # `taskflow stack up --brokers N`: N combined broker+controller nodes. Their client
    # and controller ports, comma-separated; by default kafka_port and
    # kafka_controller_port, then each two higher per node.
    stack_brokers: int = Field(default=1, ge=1)
    kafka_ports: str = ""
    kafka_controller_ports: str = ""
    pg_port: int = 15432
    kafka_bootstrap: str = ""  # default: 127.0.0.1:<kafka_port>
    database_url: str = ""  # default: postgresql+asyncpg://taskflow:taskflow@127.0.0.1:<pg_port>/taskflow
    # A file holding the database password (a mounted secret, or the one compose
    # generates): it replaces the password of database_url. Empty = the URL's own.
    database_password_file: str = ""
    # TLS to Postgres, as libpq names it: sslmode disable, allow, prefer, require, verify-ca
    # or verify-full, and the CA file (PEM) to verify the server with. Empty = what
    # database_url says (?sslmode=...&sslrootcert=..., or ?ssl=... as SQLAlchemy writes it).
    database_sslmode: str = Field(
        default="", pattern=r"^(|disable|allow|prefer|require|verify-ca|verify-full)$")
    database_sslrootcert: str = ""
    topic: str = constants.TOPIC
    partitions: int = Field(default=constants.PARTITIONS, ge=1)
    # Copies of each partition the topics are created with, and how many must hold a
    # write before it is acknowledged (acks=all). 3 and 2 on a three-broker cluster.
    replication_factor: int = Field(default=1, ge=1)
    min_insync_replicas: int = Field(default=1, ge=1)
    # How clients reach the cluster (see docs/deploy.md): PLAINTEXT, SSL, SASL_PLAINTEXT
    # or SASL_SSL; SASL with PLAIN or SCRAM-SHA-256/512; a CA file for SSL.
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "PLAIN"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = ""
    kafka_ssl_cafile: str = ""
    worker_group: str = constants.WORKER_GROUP
    worker_id: str = ""  # defaults to hostname-pid
    # The CloudEvents ``source`` of the events each service writes; empty = its prefix
    # and its id (taskflow/worker/<worker id>, which holds the host name by default).
    worker_source: str = Field(default="", max_length=200, pattern=r"^\S*$")
    scheduler_source: str = Field(default="", max_length=200, pattern=r"^\S*$")
    coordinator_source: str = Field(default="", max_length=200, pattern=r"^\S*$")
    worker_concurrency: int = Field(default=constants.WORKER_CONCURRENCY, ge=1)
    # Tasks a worker holds, waiting for a slot or running, before it stops reading its
    # log: the backlog among which priority and fair share choose (docs/priorities.md).
    worker_queue_max: int = Field(default=constants.WORKER_QUEUE_MAX, ge=1)
    # Fair share between tenants: "acme=3,globex=1"; a tenant not listed weighs 1.
    tenant_weights: str = ""
    # Starts per second per task type across the pool: "email=10,http=50" (worker/ratelimit.py).
    type_rate_limits: str = ""
    # Worker pools (events/pools.py): the types this worker serves (`--types`; empty =
    # the default pool), and the types only dedicated pools serve (set it on every worker).
    worker_types: str = ""
    pooled_types: str = ""
    # Each worker writes its pool and the types it serves to Postgres (worker_pools) this
    # often; a row not written for three intervals counts as gone (events/pool_registry.py).
    worker_pool_refresh_s: float = Field(default=5.0, gt=0)
    default_timeout_s: float = Field(default=constants.DEFAULT_TIMEOUT_S, gt=0)
    default_max_attempts: int = Field(default=constants.DEFAULT_MAX_ATTEMPTS, ge=1)
    retry_base_s: float = Field(default=constants.RETRY_BASE_S, ge=0)
    retry_cap_s: float = Field(default=constants.RETRY_CAP_S, ge=0)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    # Comma-separated modules the worker imports at start-up; they register handlers
    # with ``@handler("name")`` (from worker.handlers).
    handler_modules: str = ""
    worker_metrics_port: int = Field(default=0, ge=0)  # 0 = no metrics endpoint
    # A file the worker and projector touch each time round their consumer loop (at most
    # once a second); its age is their liveness and readiness probe. Empty = none.
    heartbeat_file: str = ""
    # How long a worker lane lets events gather before it opens a Kafka transaction (five
    # requests and two log writes on the broker). 0 by default: a quick task finishes in
    # the loop turn that started it, so its task.processing and task.done share one anyway.
    worker_commit_linger_ms: float = Field(default=constants.WORKER_COMMIT_LINGER_MS, ge=0)
    # How often, at most, a worker lane commits its consumer-group offset (inside one of
    # its transactions). Recovery folds the log from that offset, so a longer interval
    # means a longer read after a crash, never a task run twice.
    worker_offset_commit_interval_ms: float = Field(
        default=constants.WORKER_OFFSET_COMMIT_INTERVAL_MS, ge=0)
    # The scheduler (scheduler/): its group (default: <topic>.scheduler), how often it
    # looks for due times, and how late a due time may be found and still count as on
    # time; older ones were missed (the scheduler was down) and follow the catchup policy.
    scheduler_group: str = ""
    scheduler_tick_s: float = Field(default=constants.SCHEDULER_TICK_S, gt=0)
    scheduler_grace_s: float = Field(default=constants.SCHEDULER_GRACE_S, ge=0)
    # The coordinator (coordinator/): its group (default: <topic>.coordinator), and how
    # often it looks for nodes whose task finished.
    coordinator_group: str = ""
    coordinator_tick_s: float = Field(default=constants.COORDINATOR_TICK_S, gt=0)
    projection: str = constants.PROJECTION
    projector_batch_max: int = Field(default=constants.PROJECTOR_BATCH_MAX, ge=1)
    produce_timeout_s: float = Field(default=constants.PRODUCE_TIMEOUT_S, gt=0)
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    read_wait_s: float = Field(default=constants.READ_WAIT_S, ge=0)
    sse_heartbeat_s: float = Field(default=constants.SSE_HEARTBEAT_S, gt=0)
    sse_queue_max: int = Field(default=constants.SSE_QUEUE_MAX, ge=1)
    # Kernel send buffer of each API connection (bytes; 0 = the kernel's autotuning, up to
    # several MB). A small value bounds what a stalled SSE client can pin in the kernel and
    # makes it hit the subscriber queue limit, and be dropped, sooner.
    api_socket_sndbuf: int = Field(default=0, ge=0)
    sse_send_timeout_s: float = Field(default=constants.SSE_SEND_TIMEOUT_S, gt=0)
    # task_changes (the SSE history) keeps at most this long and this many rows; the
    # projector trims it. A client resuming from a trimmed position gets `event: reset`.
    changes_retention_s: float = Field(default=7 * 86_400, gt=0)
    changes_retention_rows: int = Field(default=1_000_000, ge=1)
    # Audit (docs/audit.md): a hash chain on every task event (off: no extra bytes, no
    # extra cost), and the Ed25519 private key (PEM file) that signs audit bundles.
    audit_chain: bool = False
    audit_signing_key: str = ""
    # Retention of the read model (projector/retention.py): finished tasks older than
    # this many days leave tasks and task_events (None: kept forever). The projector
    # applies it at most every retention_sweep_interval_s seconds.
    retention_days: float | None = Field(default=None, gt=0)
    retention_sweep_interval_s: float = Field(default=3600.0, gt=0)
    # Erasure (events/crypto.py): base64 of a 32-byte master key; set, payloads and
    # results are sealed with a key per task that DELETE /tasks/{id}/data deletes.
    encryption_key: str = ""
    # Log archives (events/archive.py): replay, verify, rebuild and audit verify read
    # this folder's archive of the topic first, then the live log. Empty: none.
    archive_dir: str = ""
    changes_trim_interval_s: float = Field(default=30.0, gt=0)
    log_level: str = "info"
    # Security and limits of the HTTP API.
    # Require an API key (`taskflow keys create --tenant T`). Closed by default: only an
    # explicit TASKFLOW_AUTH=off (or false) runs the API open; `taskflow run`, the local
    # development profile of `make run`, sets that itself and says so.
    auth: bool = True
    rate_limit_per_s: float = Field(default=0.0, ge=0)  # per key and API process; 0 = off
    rate_limit_burst: int = Field(default=50, ge=1)
    # Failed authentications (a wrong or unknown key) per client address and API process:
    # a burst, then this many a second; past it 429 before any key is looked up. 0 = off.
    auth_fail_rate_per_s: float = Field(default=1.0, ge=0)
    auth_fail_burst: int = Field(default=20, ge=1)
    # Dashboard login (POST /session): how long a login cookie lasts, in seconds, and
    # whether to believe X-Forwarded-Proto for its Secure flag (a TLS-terminating proxy
    # that uvicorn's FORWARDED_ALLOW_IPS does not list).
    session_ttl_s: float = Field(default=constants.LOGIN_TTL_S, gt=0)
    trust_forwarded_proto: bool = False
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    # What a JSON body, and a handler's result, may hold (see docs/limits.md): nesting of
    # arrays/objects (a body's own object is level 1), and keys in any one object. Every
    # reader and writer of a value walks it recursively, and jsonb sorts each object's keys.
    max_json_depth: int = Field(default=constants.MAX_JSON_DEPTH, ge=2, le=254)
    max_json_keys: int = Field(default=constants.MAX_JSON_KEYS, ge=1)
    max_header_bytes: int = Field(default=constants.MAX_HEADER_BYTES, ge=1024)  # 431 past it
    cors_origins: str = ""  # comma-separated; empty = no CORS headers
    list_limit_max: int = Field(default=500, ge=1)
    # Task types this deployment accepts (POST /tasks answers 422 for others). Keep in
    # sync with the handlers your workers register.
    task_types: str = "echo,sleep,fail,flaky,compute,noop,http,email"

    @cached_property
    def task_type_list(self) -> tuple[str, ...]:
        # Cached: POST /tasks:batch asks once per task (it was 4 % of a batch's CPU).
        return tuple(t.strip() for t in self.task_types.split(",") if t.strip())

    def stack_node_ports(self, brokers: int) -> list[tuple[int, int]]:
        """(client port, controller port) of each node of a local ``brokers``-node stack."""
        def ports(listed: str, first: int) -> list[int]:
            given = [int(p) for p in listed.split(",") if p.strip()]
            return given + [first + 2 * i for i in range(len(given), brokers)]

        client = ports(self.kafka_ports, self.kafka_port)
        controller = ports(self.kafka_controller_ports, self.kafka_controller_port)
        if brokers == 1:  # the single node: kafka_port, as it always was
            return [(self.kafka_port, self.kafka_controller_port)]
        return list(zip(client[:brokers], controller[:brokers], strict=True))

    @model_validator(mode="after")
    def _local_stack_defaults(self) -> Settings:
        if not self.kafka_bootstrap:
            nodes = self.stack_node_ports(self.stack_brokers)
            object.__setattr__(self, "kafka_bootstrap",
                               ",".join(f"127.0.0.1:{c}" for c, _ in nodes))
        if not self.database_url:
            url = f"postgresql+asyncpg://taskflow:taskflow@127.0.0.1:{self.pg_port}/taskflow"
            object.__setattr__(self, "database_url", url)
        if self.database_password_file:
            object.__setattr__(self, "database_url", with_password(
                self.database_url, Path(self.database_password_file).read_text().strip()))
        tls = {k: v for k, v in (("sslmode", self.database_sslmode),
                                 ("sslrootcert", self.database_sslrootcert)) if v}
        if tls:
            object.__setattr__(self, "database_url", with_query(self.database_url, tls))
        return self


def with_query(url: str, params: dict[str, str]) -> str:
    """``url`` with ``params`` set in its query (replacing ``ssl``, SQLAlchemy's name for
    ``sslmode``, when ``sslmode`` is given)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if "sslmode" in params:
        query.pop("ssl", None)
    query.update(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


def with_password(url: str, password: str) -> str:
    """``url`` with its password replaced (quoted as a URL needs it)."""
    parts = urlsplit(url)
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings; fails fast with the name of the bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        names = ", ".join("TASKFLOW_" + str(e["loc"][0]).upper() for e in exc.errors())
        raise ConfigError(f"invalid configuration in {names}: {exc}") from exc
