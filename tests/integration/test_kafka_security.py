"""SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and TLS reach librdkafka from the
configuration and the environment, and the service runs over an authenticated,
encrypted listener.

The listener is :class:`tests.kafka_auth_proxy.AuthProxy` in front of the embedded
broker (whose own authentication and TLS modes cannot be used by a test; see that
module). The certificate is made here with the ``openssl`` command line.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from connectors.base import OutMessage
from connectors.embedded import free_port
from connectors.kafka import BrokerUnreachableError, KafkaSink, ensure_topics, wait_for_cluster
from monitor.config.schema import load_config
from monitor.dev.synthetic import DEMO_STREAM, generate_fleet
from monitor.runtime.service import Service
from tests.kafka_auth_proxy import AuthProxy, fronted_broker

pytestmark = pytest.mark.integration

USER, PASSWORD = "driftwarden", "pw-Kq83-unique-Zt5"
ROOT = Path(__file__).resolve().parents[2]


def make_certificate(directory: Path, name: str = "broker") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (it is its own CA): (cert, key)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is not installed")
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=20,
    )  # fmt: skip
    return cert, key


@dataclass
class SecuredBroker:
    bootstrap: str
    ca: Path
    proxy: AuthProxy


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredBroker]:
    cert, key = make_certificate(tmp_path_factory.mktemp("tls"))
    with fronted_broker(cert, key, users={USER: PASSWORD}) as proxy:
        secured = SecuredBroker(f"127.0.0.1:{proxy.port}", cert, proxy)
        wait_for_cluster(_options(secured, "SCRAM-SHA-512"), 15)
        yield secured


def _options(b: SecuredBroker, mechanism: str, password: str = PASSWORD) -> dict[str, Any]:
    return {
        "bootstrap.servers": b.bootstrap,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": mechanism,
        "sasl.username": USER,
        "sasl.password": password,
        "ssl.ca.location": str(b.ca),
    }


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_mechanisms_over_tls(secured: SecuredBroker, unique: str, mechanism: str) -> None:
    before = len(secured.proxy.authenticated)
    sink = KafkaSink(_options(secured, mechanism))
    sink.send(OutMessage(topic=f"auth.{unique}", value=b"{}", key=None))
    assert sink.flush(10) == 0
    assert sink.acknowledged == 1
    assert (mechanism, USER) in secured.proxy.authenticated[before:]


def test_wrong_password_fails_with_the_reason(secured: SecuredBroker) -> None:
    with pytest.raises(BrokerUnreachableError) as err:
        wait_for_cluster(_options(secured, "SCRAM-SHA-256", password="nope-Xy7"), 3)
    message = str(err.value)
    assert f"bootstrap.servers={secured.bootstrap}" in message
    assert "SASL authentication error" in message and "\n" not in message
    assert "nope-Xy7" not in message


def test_untrusted_certificate_fails_with_the_reason(
    secured: SecuredBroker, tmp_path: Path
) -> None:
    other, _ = make_certificate(tmp_path, "other")
    options = _options(secured, "PLAIN") | {"ssl.ca.location": str(other)}
    with pytest.raises(BrokerUnreachableError) as err:
        wait_for_cluster(options, 3)
    assert "certificate verify failed" in str(err.value)


def test_service_runs_over_sasl_ssl_from_environment(
    secured: SecuredBroker,
    unique: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The config names neither user nor password; the environment does, and the
    CA file is given relative to the config file."""
    topic = f"iot.{unique}"
    events = generate_fleet(3000, seed=11, bad_rate=0.0)
    producer = Producer(
        _options(secured, "SCRAM-SHA-512") | {"logger": logging.getLogger("producer")}
    )
    for value in events.values:
        producer.produce(topic, value)
    assert producer.flush(15) == 0

    shutil.copy(secured.ca, tmp_path / "ca.pem")
    stream = copy.deepcopy(DEMO_STREAM) | {"topic": topic}
    stream["baseline"] = {"first_events": 1000}
    config_file = tmp_path / "driftwarden.yaml"
    import yaml

    config_file.write_text(
        yaml.safe_dump(
            {
                "kafka": {
                    "bootstrap.servers": "127.0.0.1:1",  # replaced by the environment
                    "ssl.ca.location": "ca.pem",
                    "session.timeout.ms": 6000,
                },
                "group": f"dw-{unique}",
                "metrics": {"listen": "127.0.0.1:0"},
                "dead_letter_topic": f"dlq.{unique}",
                "state": {"topic": f"state.{unique}"},
                "source": {"max_wait": "200ms"},
                "streams": [stream],
            }
        )
    )
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": secured.bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": USER,
        "KAFKA_SASL_PASSWORD": PASSWORD,
    }
    config = load_config(config_file, env=env)
    assert config.kafka["ssl.ca.location"] == str(tmp_path / "ca.pem")
    assert PASSWORD not in repr(config)

    caplog.set_level(logging.DEBUG)
    before = len(secured.proxy.authenticated)
    service = Service(config, registry=CollectorRegistry())
    started = time.monotonic()
    stats = service.run(max_seconds=15, until=lambda s: s.events >= len(events.values))
    assert stats.events == len(events.values), stats
    assert time.monotonic() - started < 15
    assert len(secured.proxy.authenticated) > before  # every client authenticated
    assert all(m == "SCRAM-SHA-512" for m, _ in secured.proxy.authenticated[before:])
    assert PASSWORD not in caplog.text


class _Receiver:
    """A local webhook receiver: 500 on /hook (failures get logged and counted), 200
    elsewhere; records every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.requests.append((self.path, dict(self.headers), body))
                self.send_response(500 if self.path.startswith("/hook") else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as e:
        body = e.read()
        e.close()
        return int(e.code), body


@pytest.mark.slow
def test_secrets_never_appear_in_any_output(
    secured: SecuredBroker,
    unique: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Known secrets in the environment and the config; every output is searched."""
    import yaml

    secrets = {
        "KAFKA_SASL_PASSWORD": PASSWORD,
        "HOOK_SECRET": "whsec-Qz81-never-shown",
        "HOOK_URL_TOKEN": "urltok-Mv42-never-shown",
        "SLACK_PATH_TOKEN": "slackpath-Ha93-never-shown",
        "PD_ROUTING_KEY": "pdkey-Lw27-never-shown",
        "DRIFTWARDEN_HTTP_TOKEN": "bearer-Rt65-never-shown",
    }
    topic = f"iot.{unique}"
    events = generate_fleet(8000, seed=3, bad_rate=0.02, drift_at=4000, drift_shift=3.0)
    producer = Producer(
        _options(secured, "SCRAM-SHA-512") | {"logger": logging.getLogger("producer")}
    )
    for value in events.values:
        producer.produce(topic, value)
    assert producer.flush(15) == 0

    receiver = _Receiver()
    base = f"http://127.0.0.1:{receiver.port}"
    metrics_port = free_port()
    stream = copy.deepcopy(DEMO_STREAM) | {
        "topic": topic,
        "baseline": {"first_events": 2000},
        "window": {"events": 1000, "step": 500},
    }
    doc = {
        # librdkafka's own SASL/TLS debug lines are searched too
        "kafka": {"ssl.ca.location": str(secured.ca), "session.timeout.ms": 6000,
                  "debug": "security"},
        "group": f"dw-{unique}",
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "dead_letter_topic": f"dlq.{unique}",
        "state": {"topic": f"state.{unique}"},
        "source": {"max_batch_events": 500, "max_wait": "200ms", "connect_timeout": "3s"},
        "streams": [stream],
        "alerts": {
            "topic": f"alerts.{unique}",
            "delivery": {"backoff_initial": "100ms", "backoff_max": "200ms"},
            "sinks": [
                {"type": "webhook", "name": "hook", "secret": "${HOOK_SECRET}",
                 "url": f"{base}/hook?token=${{HOOK_URL_TOKEN}}", "timeout": 2},
                {"type": "slack", "name": "slack", "url": f"{base}/slack/${{SLACK_PATH_TOKEN}}"},
                {"type": "pagerduty", "name": "pd", "url": f"{base}/pd",
                 "routing_key": "${PD_ROUTING_KEY}", "min_severity": "info"},
            ],
        },
    }  # fmt: skip
    config_file = tmp_path / "driftwarden.yaml"
    config_file.write_text(yaml.safe_dump(doc))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DRIFTWARDEN_"))},
        **secrets,
        "PYTHONPATH": str(ROOT),
        "KAFKA_BOOTSTRAP_SERVERS": secured.bootstrap,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": USER,
    }
    outputs: dict[str, str] = {}
    cli = [sys.executable, "-m", "monitor.cli", "--log-level", "debug"]

    def start(*args: str, **env_changes: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*cli, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={k: v for k, v in {**env, **env_changes}.items() if v},
        )  # fmt: skip

    broken = {**doc, "metrics": {"listen": "nowhere", "token": [secrets["DRIFTWARDEN_HTTP_TOKEN"]]}}
    broken["alerts"] = {
        "sinks": [{"type": "pagerduty", "routing_key": [secrets["PD_ROUTING_KEY"]]}]
    }
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    # the short-lived commands run alongside the service, to keep the test short
    side = {
        "validate": start("validate", str(config_file)),
        "config errors": start(
            "validate", str(tmp_path / "broken.yaml"), DRIFTWARDEN_HTTP_TOKEN=""
        ),
        "auth error": start(
            "run",
            str(config_file),
            KAFKA_SASL_PASSWORD="wrong-" + PASSWORD[::-1],
            DRIFTWARDEN_METRICS_LISTEN="127.0.0.1:0",
        ),
    }
    # The service itself runs in this process (a second interpreter start costs
    # seconds on a loaded machine); every log record at DEBUG is captured.
    caplog.set_level(logging.DEBUG)
    config = load_config(config_file, env=env)
    status_url = f"http://127.0.0.1:{metrics_port}/status.json"
    seen: dict[str, Any] = {}

    def until(stats: Any) -> bool:
        if stats.events < len(events.values) or not receiver.requests:
            return False
        code, body = _get(status_url, secrets["DRIFTWARDEN_HTTP_TOKEN"])
        seen["status"] = (code, json.loads(body))
        seen["html"] = _get(status_url.removesuffix(".json"), secrets["DRIFTWARDEN_HTTP_TOKEN"])
        seen["no token"] = _get(status_url)[0]
        seen["wrong token"] = _get(status_url, "wrong")[0]
        seen["html no token"] = _get(status_url.removesuffix(".json"))[0]
        seen["metrics"] = _get(f"http://127.0.0.1:{metrics_port}/metrics")
        return True

    try:
        service = Service(config, registry=CollectorRegistry())
        service.run(max_seconds=20, until=until, on_summary=print)
    finally:
        receiver.close()
    assert seen, "the service did not process every event and deliver a webhook in time"
    assert seen["status"][0] == 200
    assert sum(s["events"] for s in seen["status"][1]["streams"]) == len(events.values)
    assert seen["html"][0] == 200
    assert seen["no token"] == seen["wrong token"] == seen["html no token"] == 401
    assert seen["metrics"][0] == 200  # /metrics stays open
    outputs["status.json"] = json.dumps(seen["status"][1])
    outputs["status"] = seen["html"][1].decode()
    outputs["metrics"] = seen["metrics"][1].decode()
    assert 'driftwarden_sink_failed_total{reason="http 500",sink="hook"}' in outputs["metrics"]
    captured = capsys.readouterr()
    outputs["run logs"] = caplog.text
    outputs["run stdout"], outputs["run stderr"] = captured.out, captured.err
    assert any(r.name == "driftwarden.librdkafka" for r in caplog.records)
    assert {p.split("/")[1].split("?")[0] for p, _, _ in receiver.requests} >= {"hook", "slack"}
    for path, headers, body in receiver.requests:
        if path.startswith("/hook"):
            assert "X-Driftwarden-Signature" in headers
        if path == "/pd":  # the routing key is PagerDuty's address: it must be there
            assert json.loads(body)["routing_key"] == secrets["PD_ROUTING_KEY"]
        else:
            outputs[f"delivered {path[:5]}"] = body.decode()  # no secret in the bodies

    outputs["repr"] = repr(config) + str(config) + repr(config.alerts)
    results = {name: (p.communicate(timeout=20), p.returncode) for name, p in side.items()}
    for name, ((out_, err_), _) in results.items():
        outputs[name] = out_ + err_
        assert "Traceback" not in err_, err_
    assert results["validate"][1] == 0, outputs["validate"]
    assert results["config errors"][1] == 2, outputs["config errors"]
    assert "metrics.token" in outputs["config errors"]
    assert "routing_key" in outputs["config errors"]
    assert results["auth error"][1] != 0
    assert "SASL authentication error" in outputs["auth error"]

    for where, text in outputs.items():
        for name, secret in secrets.items():
            assert secret not in text, f"{name} leaked into {where}"
            assert secret[::-1] not in text, f"{name} (reversed) leaked into {where}"


def _fetch_all(
    options: dict[str, Any], topic: str, n: int, seconds: float
) -> tuple[list[int], list[str]]:
    """Offsets read from partition 0 by the direct fetcher, and the errors it reported."""
    from connectors.fetch import DirectFetcher

    errors: list[str] = []
    fetcher = DirectFetcher(options, on_error=lambda name, _: errors.append(name), max_wait=0.1)
    offsets: list[int] = []
    try:
        fetcher.assign({(topic, 0): 0})
        deadline = time.monotonic() + seconds
        while len(offsets) < n and time.monotonic() < deadline:
            for _, cols in fetcher.take(1_000, 0.2):
                offsets.extend(int(o) for o in cols.offsets)
    finally:
        fetcher.close()
    return offsets, errors


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_direct_fetch_authenticates_over_tls(
    secured: SecuredBroker, unique: str, mechanism: str
) -> None:
    """source.fetch 'direct' speaks SASL itself (PLAIN and SCRAM) over TLS."""
    topic = f"direct.auth.{unique}"
    assert not ensure_topics(_options(secured, mechanism), [topic], partitions=1)
    sink = KafkaSink(_options(secured, mechanism))
    for i in range(300):
        sink.send(OutMessage(topic=topic, value=b'{"i":%d}' % i, key=None))
    assert sink.flush(10) == 0
    before = len(secured.proxy.authenticated)
    offsets, _ = _fetch_all(_options(secured, mechanism), topic, 300, 20)
    assert offsets == list(range(300))
    assert (mechanism, USER) in secured.proxy.authenticated[before:]


def test_direct_fetch_with_a_wrong_password_reports_and_never_logs_it(
    secured: SecuredBroker, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    options = _options(secured, "SCRAM-SHA-256", password="nope-Qw9")
    offsets, errors = _fetch_all(options, f"direct.denied.{unique}", 1, 3)
    assert not offsets and "_TRANSPORT" in errors
    assert "SASL authentication failed" in caplog.text
    assert "nope-Qw9" not in caplog.text
