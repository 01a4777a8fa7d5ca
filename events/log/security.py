"""How every Kafka client of this process authenticates: the ``TASKFLOW_KAFKA_*`` security
settings turned into aiokafka constructor options (none for PLAINTEXT)."""

from __future__ import annotations

from typing import Any

from aiokafka.helpers import create_ssl_context

from events.errors import ConfigError
from events.settings import get_settings

PROTOCOLS = frozenset({"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"})
MECHANISMS = frozenset({"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"})


def client_options(*, protocol: str | None = None, mechanism: str | None = None,
                   username: str | None = None, password: str | None = None,
                   cafile: str | None = None) -> dict[str, Any]:
    """The security options for an aiokafka client; each argument defaults to its setting."""
    s = get_settings()
    protocol = (protocol or s.kafka_security_protocol).upper()
    if protocol not in PROTOCOLS:
        raise ConfigError(f"TASKFLOW_KAFKA_SECURITY_PROTOCOL: {protocol!r} is not one of "
                          f"{sorted(PROTOCOLS)}")
    if protocol == "PLAINTEXT":
        return {}
    opts: dict[str, Any] = {"security_protocol": protocol}
    if protocol.endswith("SSL"):
        ca = cafile if cafile is not None else s.kafka_ssl_cafile
        opts["ssl_context"] = create_ssl_context(cafile=ca or None)
    if protocol.startswith("SASL"):
        mechanism = (mechanism or s.kafka_sasl_mechanism).upper()
        if mechanism not in MECHANISMS:
            raise ConfigError(f"TASKFLOW_KAFKA_SASL_MECHANISM: {mechanism!r} is not one of "
                              f"{sorted(MECHANISMS)}")
        user = username if username is not None else s.kafka_sasl_username
        if not user:
            raise ConfigError(f"TASKFLOW_KAFKA_SASL_USERNAME is required with {protocol}")
        opts.update(sasl_mechanism=mechanism, sasl_plain_username=user,
                    sasl_plain_password=password if password is not None
                    else s.kafka_sasl_password)
    return opts
