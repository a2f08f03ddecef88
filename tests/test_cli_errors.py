"""The command line fails clearly: one line per problem, no traceback, non-zero exit,
before anything starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from detectors.baseline import Baseline, build_categorical, build_numeric, save_baseline

ROOT = Path(__file__).resolve().parent.parent


def _cli(
    *args: str, cwd: Path | None = None, timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for var in ("KAFKA_BOOTSTRAP_SERVERS", "DRIFTWARDEN_METRICS_LISTEN"):
        env.pop(var, None)
    return subprocess.run(
        [sys.executable, "-m", "monitor.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd or ROOT,
        check=False,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield int(s.getsockname()[1])


def _config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kafka": {"bootstrap.servers": f"127.0.0.1:{_free_port()}"},
        "metrics": {"listen": f"127.0.0.1:{_free_port()}"},
        "source": {"connect_timeout": "2s"},
        "streams": [
            {
                "name": "sensors",
                "topic": "iot.sensors",
                "fields": {
                    "temperature": {"type": "float"},
                    "status": {"type": "category", "categories": ["ok", "fail"]},
                },
            }
        ],
    }
    doc.update(overrides)
    return doc


def _write(path: Path, doc: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def _no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr


def test_version() -> None:
    result = _cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip().startswith("driftwarden ")


def test_unreachable_broker_is_one_clear_line(tmp_path: Path) -> None:
    cfg = _write(tmp_path / "c.yaml", _config(tmp_path))
    bootstrap = yaml.safe_load(cfg.read_text())["kafka"]["bootstrap.servers"]
    started = time.monotonic()
    result = _cli("run", str(cfg), "--max-seconds", "5")
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    _no_traceback(result)
    errors = [line for line in result.stderr.splitlines() if " ERROR driftwarden:" in line]
    assert len(errors) == 1, result.stderr
    assert f"Kafka is unreachable at bootstrap.servers={bootstrap} after 2 s" in errors[0]
    assert "Connection refused" in errors[0]  # librdkafka's reason
    # librdkafka's own lines come through logging, de-duplicated: a handful, not hundreds
    assert len(result.stderr.splitlines()) <= 6, result.stderr
    assert "%3|" not in result.stderr  # nothing printed by librdkafka itself
    assert elapsed < 15


def test_metrics_port_in_use(tmp_path: Path, busy_port: int) -> None:
    doc = _config(tmp_path, metrics={"listen": f"127.0.0.1:{busy_port}"})
    result = _cli("run", str(_write(tmp_path / "c.yaml", doc)))
    assert result.returncode != 0
    _no_traceback(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"cannot serve metrics on 127.0.0.1:{busy_port}" in lines[0]
    assert "Address already in use" in lines[0]
    assert "metrics.listen" in lines[0]


def test_demo_metrics_port_in_use(busy_port: int) -> None:
    result = _cli("demo", "--metrics-port", str(busy_port), "--seconds", "1")
    assert result.returncode != 0
    _no_traceback(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"127.0.0.1:{busy_port}" in lines[0]
    assert "--metrics-port" in lines[0] and "METRICS_PORT" in lines[0]
    assert "broker" not in result.stdout  # nothing started


@pytest.mark.parametrize(
    ("field", "detector", "allowed"),
    [
        ({"type": "category", "categories": ["a", "b"]}, "ks", "float, int"),
        ({"type": "float"}, "chi2", "bool, category"),
        ({"type": "bool"}, "ks", "float, int"),
        ({"type": "category"}, "adwin", "float, int"),
        ({"type": "string"}, "psi", "bool, category, float, int"),
    ],
)
def test_validate_rejects_detector_field_type_mismatch(
    tmp_path: Path, field: dict[str, Any], detector: str, allowed: str
) -> None:
    doc = _config(tmp_path)
    doc["streams"][0]["fields"]["x"] = {**field, "detectors": [detector]}
    cfg = _write(tmp_path / "c.yaml", doc)
    for command in ("validate", "run"):
        result = _cli(command, str(cfg))
        assert result.returncode == 2, result
        _no_traceback(result)
        problems = result.stderr.strip().splitlines()[1:]
        assert len(problems) == 1, result.stderr
        assert "streams[0].fields.x" in problems[0]
        assert f"detector '{detector}' does not fit a {field['type']} field" in problems[0]
        assert f"it runs on {allowed} fields" in problems[0]


def _baseline(path: Path, numeric: bool = True) -> None:
    temp = build_numeric(list(range(100)), bins=10) if numeric else build_categorical(["a"] * 5)
    status = build_categorical(["ok"] * 9 + ["fail"])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_baseline(
        Baseline(
            id="b1",
            created_at="2026-11-29",
            source="test",
            fields={"temperature": temp, "status": status},
        ),
        path,
    )


def test_validate_checks_baseline_files_relative_to_the_config(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc"
    doc = _config(tmp_path)
    doc["streams"][0]["baseline"] = {"file": "baselines/sensors.json"}
    cfg = _write(conf_dir / "c.yaml", doc)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()

    missing = _cli("validate", str(cfg), cwd=elsewhere)
    assert missing.returncode == 2
    _no_traceback(missing)
    expected = conf_dir / "baselines" / "sensors.json"
    assert f"streams[sensors].baseline.file: {expected} does not exist" in missing.stderr

    _baseline(expected)
    ok = _cli("validate", str(cfg), cwd=elsewhere)  # resolved against etc/, not cwd
    assert ok.returncode == 0, ok.stderr
    assert "ok (1 stream(s), 2 field(s))" in ok.stdout

    _baseline(expected, numeric=False)  # temperature now has a categorical reference
    wrong = _cli("validate", str(cfg), cwd=elsewhere)
    assert wrong.returncode == 2
    _no_traceback(wrong)
    assert "field 'temperature' is float but baseline 'b1' holds a categorical" in wrong.stderr

    doc["streams"][0]["fields"]["humidity"] = {"type": "float"}
    _write(cfg, doc)
    absent = _cli("validate", str(cfg), cwd=elsewhere)
    assert absent.returncode == 2
    assert "has no reference for field 'humidity'" in absent.stderr

    expected.write_text("{not json", encoding="utf-8")
    broken = _cli("validate", str(cfg), cwd=elsewhere)
    assert broken.returncode == 2
    _no_traceback(broken)
    assert "is not a baseline artifact" in broken.stderr


def test_validate_checks_tls_files_relative_to_the_config(tmp_path: Path) -> None:
    doc = _config(tmp_path)
    doc["kafka"].update({"security.protocol": "SSL", "ssl.ca.location": "certs/ca.pem"})
    doc["alerts"] = {
        "sinks": [
            {
                "type": "webhook",
                "name": "hook",
                "url": "https://h.test/x",
                "secret": "k" * 20,
                "tls_ca_file": "certs/hook-ca.pem",
            }
        ]
    }
    cfg = _write(tmp_path / "c.yaml", doc)
    result = _cli("validate", str(cfg))
    assert result.returncode == 2
    assert f'kafka."ssl.ca.location": {tmp_path}/certs/ca.pem does not exist' in result.stderr
    assert f"alerts.sinks[hook].tls_ca_file: {tmp_path}/certs/hook-ca.pem" in result.stderr
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "ca.pem").write_text("x")
    (tmp_path / "certs" / "hook-ca.pem").write_text("x")
    assert _cli("validate", str(cfg)).returncode == 0


def test_unsigned_webhook_is_refused_unless_declared(tmp_path: Path) -> None:
    doc = _config(tmp_path)
    doc["alerts"] = {"sinks": [{"type": "webhook", "url": "https://h.test/x"}]}
    cfg = _write(tmp_path / "c.yaml", doc)
    result = _cli("validate", str(cfg))
    assert result.returncode == 2
    _no_traceback(result)
    assert "a webhook sink needs a secret" in result.stderr
    assert "unsigned: true" in result.stderr
    assert "h.test" not in result.stderr  # webhook URLs are never echoed
    doc["alerts"]["sinks"][0]["unsigned"] = True
    assert _cli("validate", str(_write(cfg, doc))).returncode == 0


def test_invalid_yaml_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kafka: {bootstrap.servers: [\n  sasl.password: hunter2-secret\n")
    result = _cli("validate", str(cfg))
    assert result.returncode == 2
    _no_traceback(result)
    assert len(result.stderr.strip().splitlines()) == 1
    assert "is not valid YAML at line" in result.stderr
    assert "hunter2" not in result.stderr
