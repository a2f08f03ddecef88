"""Configuration: security overrides from the environment, secrets masked, relative
paths, detector/field-type fits, and the librdkafka log filter."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.kafka import RateLimitFilter, client_options, librdkafka_logger
from monitor.config.schema import (
    DEFAULT_DETECTORS,
    DETECTOR_TYPES,
    KAFKA_ENV_OVERRIDES,
    load_config,
    parse_config,
)
from monitor.errors import ConfigError


def _raw(**extra: Any) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap.servers": "h:1"},
        "streams": [{"name": "s", "topic": "t", "fields": {"x": {"type": "float"}}}],
        **extra,
    }


def test_security_options_come_from_the_environment() -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "b1:9093,b2:9093",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "KAFKA_SASL_USERNAME": "dw",
        "KAFKA_SASL_PASSWORD": "pw-env-123",
        "KAFKA_SSL_CA_LOCATION": "/etc/ssl/ca.pem",
        "DRIFTWARDEN_HTTP_TOKEN": "tok-env-456",
    }
    config = parse_config(_raw(), env=env)
    assert config.kafka == {
        "bootstrap.servers": "b1:9093,b2:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "dw",
        "sasl.password": "pw-env-123",
        "ssl.ca.location": "/etc/ssl/ca.pem",
    }
    assert set(KAFKA_ENV_OVERRIDES) <= set(env)
    assert config.metrics.token is not None
    assert config.metrics.token.get_secret_value() == "tok-env-456"
    for text in (repr(config), str(config), repr(config.metrics)):
        assert "pw-env-123" not in text and "tok-env-456" not in text
    assert "dw" in repr(config)  # only secrets are masked
    # what librdkafka gets: everything, plus the logger
    options = client_options(config.kafka)
    assert options["sasl.password"] == "pw-env-123"
    assert options["logger"] is librdkafka_logger()


def test_environment_wins_over_the_file() -> None:
    raw = _raw()
    raw["kafka"]["sasl.password"] = "from-file"
    config = parse_config(raw, env={"KAFKA_SASL_PASSWORD": "from-env"})
    assert config.kafka["sasl.password"] == "from-env"


@pytest.mark.parametrize(
    "key", ["sasl.password", "ssl.key.password", "ssl.key.pem", "sasl.oauthbearer.client.secret"]
)
def test_secret_kafka_options_are_masked(key: str) -> None:
    raw = _raw()
    raw["kafka"][key] = "s3cr3t-value"
    config = parse_config(raw, env={})
    assert "s3cr3t-value" not in repr(config)
    assert config.redacted_kafka()[key] == "***"


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    raw = _raw()
    raw["kafka"].update(
        {"ssl.ca.location": "certs/ca.pem", "ssl.certificate.location": "/abs/c.pem"}
    )
    raw["streams"][0]["baseline"] = {"file": "baselines/s.json"}
    raw["alerts"] = {
        "sinks": [{"type": "slack", "url": "https://h.test/x", "tls_ca_file": "ca/hook.pem"}]
    }
    path = tmp_path / "conf" / "dw.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path, env={})
    assert config.kafka["ssl.ca.location"] == str(path.parent / "certs/ca.pem")
    assert config.kafka["ssl.certificate.location"] == "/abs/c.pem"
    assert config.streams[0].baseline.file == path.parent / "baselines/s.json"
    assert config.alerts is not None
    assert config.alerts.sinks[0].tls_ca_file == str(path.parent / "ca/hook.pem")
    # parse_config without a file leaves paths as written
    assert parse_config(raw, env={}).kafka["ssl.ca.location"] == "certs/ca.pem"


def test_default_detectors_fit_their_types() -> None:
    for field_type, detectors in DEFAULT_DETECTORS.items():
        for name in detectors:
            assert field_type in DETECTOR_TYPES[name], (field_type, name)


def test_detector_that_does_not_fit_is_an_error() -> None:
    raw = _raw()
    raw["streams"][0]["fields"]["x"] = {"type": "bool", "detectors": ["adwin"]}
    with pytest.raises(ConfigError, match="detector 'adwin' does not fit a bool field"):
        parse_config(raw, env={})


def test_rate_limit_filter_drops_repeats_and_bursts() -> None:
    now = [0.0]
    f = RateLimitFilter(window=10.0, burst=3, clock=lambda: now[0])

    def rec(msg: str) -> logging.LogRecord:
        return logging.LogRecord("x", logging.ERROR, "", 0, msg, None, None)

    passed = [f.filter(rec(f"connect to host:{i} failed")) for i in range(100)]
    assert passed.count(True) == 1  # digits ignored: one line for 100 retries
    records = [rec(m) for m in ("a", "b", "c")]
    assert [f.filter(r) for r in records] == [True, True, False]  # a burst of 3 per window
    assert records[0].getMessage() == "a (99 earlier line(s) suppressed)"
    now[0] = 10.0
    r = rec("connect to host:7 failed")
    assert f.filter(r)  # a new window lets the line through again, with the count
    assert r.getMessage() == "connect to host:7 failed (1 earlier line(s) suppressed)"
    assert f.suppressed == 100
