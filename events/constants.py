"""Names, defaults and units in one place."""

from typing import Final

TOPIC: Final = "taskflow.task-events"
DEAD_LETTER_TOPIC_SUFFIX: Final = ".dlt"  # worker poison records go to <topic>.dlt
DEAD_LETTER_PARTITIONS: Final = 1  # poison records are a trickle: one partition, in order
PARTITIONS: Final = 12  # of a new event topic; `taskflow topics grow` adds more later
# ms between two metadata refreshes of a client (Kafka's default is 5 min): partitions a
# grown topic gained are consumed, and hashed to, within this.
METADATA_MAX_AGE_MS: Final = 30_000
CONTENT_TYPE: Final = "application/cloudevents+json"
SPEC_VERSION: Final = "1.0"
API_SOURCE: Final = "taskflow/api"
CLI_SOURCE: Final = "taskflow/cli"
WORKER_SOURCE_PREFIX: Final = "taskflow/worker/"

WORKER_GROUP: Final = "taskflow.worker"
SCHEDULER_SOURCE_PREFIX: Final = "taskflow/scheduler/"
SCHEDULER_TICK_S: Final = 0.1  # seconds between two looks for due times
SCHEDULER_GRACE_S: Final = 2.0  # seconds late a due time may be found and count as on time
SCHEDULER_CATCHUP_MAX: Final = 1000  # due times of one schedule handled per look, at most
COORDINATOR_SOURCE_PREFIX: Final = "taskflow/coordinator/"
COORDINATOR_TICK_S: Final = 0.1  # seconds between two looks for finished nodes
PROJECTION: Final = "tasks"  # name of the live projection in projector_offsets
PROJECTOR_GROUP_PREFIX: Final = "taskflow.projector."  # + projection name
CHANGES_CHANNEL: Final = "taskflow_changes"  # pg_notify channel (wake-up only)

PRODUCE_TIMEOUT_S: Final = 5.0  # seconds the API waits for acks=all before 503
PROJECTOR_BATCH_MAX: Final = 5000  # events per projector transaction, at most
WORKER_CONCURRENCY: Final = 8  # tasks in flight per worker process
WORKER_QUEUE_MAX: Final = 20_000  # tasks a worker holds ready or running (its read-ahead)
TXN_RETRY_BACKOFF_MS: Final = 10  # ms before a transactional request is retried
TXN_CONFLICT_BACKOFF_S: Final = 0.005  # s before retrying a txn refused as concurrent
DEFAULT_TIMEOUT_S: Final = 300.0  # seconds a handler may run
DEFAULT_MAX_ATTEMPTS: Final = 3
RETRY_BASE_S: Final = 1.0  # seconds, first retry delay before jitter
RETRY_CAP_S: Final = 300.0  # seconds, longest retry delay
SSE_HEARTBEAT_S: Final = 15.0  # seconds between keep-alive comments
SSE_RETRY_MS: Final = 2000  # ms, reconnect hint sent to EventSource clients
SSE_QUEUE_MAX: Final = 1000  # changes buffered per subscriber before it is dropped
SSE_SEND_TIMEOUT_S: Final = 10.0  # seconds a single send may block before the client is dropped
READY_PROBE_TIMEOUT_S: Final = 3.0  # seconds each /readyz probe (Kafka, Postgres) may take
READ_WAIT_S: Final = 2.0  # seconds a read waits for the projector to reach a position
MAX_JSON_DEPTH: Final = 32  # levels of nested arrays/objects in a request body or a result
MAX_JSON_KEYS: Final = 1000  # keys in one JSON object of a request body or a result
MAX_HEADER_BYTES: Final = 16 * 1024  # bytes of request headers in all (names and values)
LOGIN_TTL_S: Final = 8 * 3600.0  # seconds a dashboard login lasts (8 h)
LOGIN_COOKIE: Final = "taskflow_session"  # the dashboard's login cookie (POST /session)
CSRF_HEADER: Final = "X-CSRF-Token"  # a cookie-authenticated write must carry it
HEADER_DLT_TOPIC: Final = "taskflow.dlt.topic"
HEADER_DLT_PARTITION: Final = "taskflow.dlt.partition"
HEADER_DLT_OFFSET: Final = "taskflow.dlt.offset"
HEADER_DLT_ERROR: Final = "taskflow.dlt.error"
# Set when a parked record's value was cut to DLT_VALUE_MAX: its original length in bytes.
HEADER_DLT_TRUNCATED: Final = "taskflow.dlt.truncated"
DLT_VALUE_MAX: Final = 512 * 1024  # bytes of a parked record's value the .dlt copy keeps
WORKER_COMMIT_LINGER_MS: Final = 0.0  # see Settings.worker_commit_linger_ms
WORKER_OFFSET_COMMIT_INTERVAL_MS: Final = 1000.0  # see Settings.worker_offset_commit_interval_ms
FETCH_MIN_BYTES: Final = 64 * 1024  # a group consumer's fetch: this much, or ...
FETCH_MAX_WAIT_MS: Final = 10  # ... this long
FETCH_IDLE_MAX_WAIT_MS: Final = 250  # after an empty fetch: the first byte, or this long
FETCH_BUSY_MIN_BYTES: Final = 256 * 1024  # a gathering fetch while events flow fast: ...
FETCH_BUSY_MAX_WAIT_MS: Final = 50  # ... this much, or this long; and ...
FETCH_BUSY_BYTES_PER_MS: Final = 1024  # ... "fast" starts here (bytes/ms), ...
FETCH_CALM_BYTES_PER_MS: Final = 512  # ... and ends below this
# A title search (`GET /tasks?q=`) first asks the trigram index for every match; a term
# with more matches than this, or one the index cannot answer within the time, is common
# enough that walking the tasks newest first finds a page sooner.
SEARCH_FEW_ROWS: Final = 5000  # rows
SEARCH_FEW_TIMEOUT_MS: Final = 25  # ms
