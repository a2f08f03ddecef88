from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.cli import main
from monitor.config.schema import FieldType, load_config, parse_config, parse_duration
from monitor.dev.synthetic import DEMO_STREAM
from monitor.errors import ConfigError

BASE: dict[str, Any] = {
    "kafka": {"bootstrap.servers": "127.0.0.1:9092"},
    "streams": [copy.deepcopy(DEMO_STREAM)],
}


def _cfg(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    raw.update(changes)
    return raw


def _error(raw: dict[str, Any], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env=env or {})
    return str(info.value)


def test_demo_stream_is_valid() -> None:
    config = parse_config(_cfg(), env={})
    stream = config.streams[0]
    assert stream.fields["status"].type is FieldType.CATEGORY
    assert stream.fields["temperature"].detector_specs() == {
        "ks": {},
        "psi": {},
        "adwin": {},
        "data_quality": {},
    }
    assert config.stream_for_topic()["iot.sensors"].name == "sensors"


def test_unknown_key_is_named_with_its_path() -> None:
    raw = _cfg()
    raw["streams"][0]["fields"]["temperature"]["rnage"] = [0, 1]
    msg = _error(raw)
    assert "streams[0].fields.temperature.rnage: unknown key" in msg


def test_every_error_is_listed_with_value_and_what_is_allowed() -> None:
    raw = _cfg(group=5, metrics={"listen": "nowhere"})
    raw["streams"][0]["fields"]["humidity"]["range"] = [100, 0]
    raw["streams"][0]["fields"]["status"]["type"] = "colour"
    msg = _error(raw)
    assert "streams[0].fields.humidity.range: range must be [low, high] with low <= high" in msg
    assert (
        "streams[0].fields.status.type: Input should be "
        "'float', 'int', 'bool', 'category' or 'string' (got 'colour')" in msg
    )
    assert "metrics.listen: listen must be HOST:PORT" in msg
    assert "group: Input should be a valid string (got 5)" in msg


def test_unknown_detector_lists_the_allowed_names() -> None:
    raw = _cfg()
    raw["streams"][0]["fields"]["temperature"]["detectors"] = ["ks", "magic"]
    msg = _error(raw)
    assert "unknown detector 'magic'; allowed: " in msg
    assert "adwin" in msg and "ks" in msg


def test_unknown_detector_parameter_is_named() -> None:
    raw = _cfg()
    raw["streams"][0]["fields"]["temperature"]["detectors"] = {"ks": {"treshold": 0.1}}
    assert "detector 'ks' has no parameter 'treshold'; allowed: " in _error(raw)


def test_reserved_kafka_options_are_rejected() -> None:
    raw = _cfg(kafka={"bootstrap.servers": "x:1", "enable.auto.commit": True})
    assert "enable.auto.commit are set by driftwarden itself" in _error(raw)


def test_librdkafka_security_options_pass_through_and_secrets_are_masked() -> None:
    raw = _cfg(
        kafka={
            "bootstrap.servers": "broker:9093",
            "security.protocol": "SASL_SSL",
            "sasl.mechanisms": "SCRAM-SHA-512",
            "sasl.username": "svc",
            "sasl.password": "${KAFKA_PASSWORD}",
            "ssl.ca.location": "/etc/ssl/ca.pem",
        }
    )
    config = parse_config(raw, env={"KAFKA_PASSWORD": "hunter2"})
    assert config.kafka["sasl.password"] == "hunter2"
    assert config.kafka["security.protocol"] == "SASL_SSL"
    assert config.redacted_kafka()["sasl.password"] == "***"
    assert "hunter2" not in repr(config.redacted_kafka())


def test_missing_environment_variable_names_the_key() -> None:
    raw = _cfg(kafka={"bootstrap.servers": "${BOOT}"})
    assert "kafka.bootstrap.servers: environment variable BOOT is not set" in _error(raw)
    assert (
        parse_config(_cfg(kafka={"bootstrap.servers": "${BOOT:-h:1}"}), env={}).kafka[
            "bootstrap.servers"
        ]
        == "h:1"
    )


def test_environment_overrides_endpoints() -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "k:9", "DRIFTWARDEN_METRICS_LISTEN": "0.0.0.0:9200"}
    config = parse_config(_cfg(), env=env)
    assert config.kafka["bootstrap.servers"] == "k:9"
    assert (config.metrics.host, config.metrics.port) == ("0.0.0.0", 9200)


def test_a_topic_belongs_to_one_stream() -> None:
    second = copy.deepcopy(DEMO_STREAM) | {"name": "other"}
    raw = _cfg(streams=[copy.deepcopy(DEMO_STREAM), second])
    assert "topic 'iot.sensors' is read by both 'sensors' and 'other'" in _error(raw)


def test_range_only_for_numbers_and_categories_only_for_categories() -> None:
    raw = _cfg()
    raw["streams"][0]["fields"]["status"]["range"] = [0, 1]
    assert "range is allowed only for float and int fields" in _error(raw)


def test_durations() -> None:
    assert parse_duration("30s") == 30.0
    assert parse_duration("2h") == 7200.0
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")


def test_validate_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(_cfg()))
    assert main(["validate", str(good)]) == 0
    assert "ok (1 stream(s), 4 field(s))" in capsys.readouterr().out
    raw = _cfg()
    raw["streams"][0]["window"] = {"events": 10, "step": 100}
    raw["streams"][0]["fields"]["vibration"]["nullable"] = "maybe"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "streams[0].window: step (100) must be <= events (10)" in err
    assert "streams[0].fields.vibration.nullable: Input should be a valid boolean" in err
    assert "(got 'maybe')" in err


def test_unreadable_and_non_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("streams: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(scalar)


def test_shipped_example_configs_validate() -> None:
    examples = sorted(Path(__file__).parents[1].joinpath("deploy", "examples").glob("*.yaml"))
    assert examples, "deploy/examples has no configuration"
    for path in examples:
        # secrets without a default (${SLACK_WEBHOOK_URL}) get a placeholder value
        secrets = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", path.read_text())
        env = {name: "https://placeholder.invalid/x" for name in secrets}
        load_config(path, env=env | {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092"})
