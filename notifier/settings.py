"""``TASKFLOW_NOTIFIER_*``: the notifier's knobs, read once at start-up."""

from __future__ import annotations

from typing import Final

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MAX_ATTEMPTS: Final = 10  # attempts of one delivery before it is dead-lettered
RETRY_BASE_S: Final = 2.0  # seconds before the second attempt (before jitter), doubling ...
RETRY_CAP_S: Final = 600.0  # ... up to this many seconds between two attempts
ENDPOINT_CONCURRENCY: Final = 4  # requests in flight to one webhook at a time
MAX_IN_FLIGHT: Final = 10_000  # deliveries held (sending or waiting to retry) per process
COMMIT_INTERVAL_S: Final = 1.0  # seconds between two commits of the group's offsets
# seconds a notifier given partitions waits for the webhook projection to hold every
# attempt already in the log (so counts continue), before it delivers anyway
PROJECTION_WAIT_S: Final = 30.0


class NotifierSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TASKFLOW_", frozen=True, extra="ignore")

    notifier_group: str = ""  # default: taskflow.notifier.<topic>
    notifier_max_attempts: int = Field(default=MAX_ATTEMPTS, ge=1)
    notifier_retry_base_s: float = Field(default=RETRY_BASE_S, ge=0)
    notifier_retry_cap_s: float = Field(default=RETRY_CAP_S, ge=0)
    notifier_endpoint_concurrency: int = Field(default=ENDPOINT_CONCURRENCY, ge=1)
    notifier_max_in_flight: int = Field(default=MAX_IN_FLIGHT, ge=1)
    notifier_projection_wait_s: float = Field(default=PROJECTION_WAIT_S, ge=0)
