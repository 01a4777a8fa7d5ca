"""The TASKFLOW_KAFKA_* security settings become the options of every Kafka client."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from events.errors import ConfigError
from events.log import security
from events.settings import get_settings


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("SECURITY_PROTOCOL", "SASL_MECHANISM", "SASL_USERNAME", "SASL_PASSWORD",
                "SSL_CAFILE"):
        monkeypatch.delenv(f"TASKFLOW_KAFKA_{key}", raising=False)
    get_settings.cache_clear()


def test_plaintext_adds_nothing() -> None:
    assert security.client_options() == {}


def test_sasl_ssl_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFLOW_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("TASKFLOW_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("TASKFLOW_KAFKA_SASL_USERNAME", "taskflow")
    monkeypatch.setenv("TASKFLOW_KAFKA_SASL_PASSWORD", "pw")
    get_settings.cache_clear()
    try:
        opts = security.client_options()
    finally:
        get_settings.cache_clear()
    assert opts["security_protocol"] == "SASL_SSL"
    assert opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (opts["sasl_plain_username"], opts["sasl_plain_password"]) == ("taskflow", "pw")
    assert isinstance(opts["ssl_context"], ssl.SSLContext)


def test_a_ca_file_is_loaded(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        security.client_options(protocol="SSL", cafile=str(tmp_path / "missing.crt"))


def test_bad_values_name_the_setting() -> None:
    with pytest.raises(ConfigError, match="TASKFLOW_KAFKA_SECURITY_PROTOCOL"):
        security.client_options(protocol="TLS")
    with pytest.raises(ConfigError, match="TASKFLOW_KAFKA_SASL_MECHANISM"):
        security.client_options(protocol="SASL_PLAINTEXT", mechanism="GSSAPI", username="u")
    with pytest.raises(ConfigError, match="TASKFLOW_KAFKA_SASL_USERNAME"):
        security.client_options(protocol="SASL_PLAINTEXT", username="")
