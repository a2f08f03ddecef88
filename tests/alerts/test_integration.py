"""Real delivery: a local HTTP receiver, and Prometheus + Alertmanager processes.

All on 127.0.0.1. The Prometheus/Alertmanager test is marked ``integration`` and
skips (naming the install script) only when the binaries are missing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from connectors.webhook import RetryPolicy, WebhookDispatcher
from monitor.alerting.engine import AlertEngine
from monitor.alerting.formats import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    deliveries_for,
    endpoints_from_config,
    verify_signature,
)
from monitor.config.alerts import AlertsConfig
from tests.alerts_utils import Receiver, prometheus_stack

from .conftest import MakeFinding


def _config(base: str, **kw: Any) -> AlertsConfig:
    return AlertsConfig.model_validate(
        {
            "resolve_after": 1,
            "default_severity": "critical",
            "sinks": [
                {"type": "webhook", "url": f"{base}/hook", "secret": "s3cret", "timeout": 2},
                {"type": "slack", "url": f"{base}/slack", "timeout": 2},
                {"type": "pagerduty", "routing_key": "R0UTE", "url": f"{base}/pd", "timeout": 2},
                {"type": "alertmanager", "url": kw.pop("am", f"{base}/am"), "timeout": 2},
            ],
            **kw,
        }
    )


def test_four_formats_reach_a_real_http_server(receiver: Receiver, finding: MakeFinding) -> None:
    config = _config(receiver.url)
    engine = AlertEngine(config)
    dispatcher = WebhookDispatcher(
        endpoints_from_config(config), retry=RetryPolicy(0.05, 0.2), clock=time.monotonic
    )
    dispatcher.start()
    try:
        receiver.status = 503  # the receiver is failing at first
        t0 = time.monotonic()
        for now, drift in ((1.7e9, True), (1.7e9 + 60, False)):
            out = engine.observe([finding(drift, 999 if drift else 1999)], now=now)
            assert dispatcher.submit_all(deliveries_for(out.alerts, config, now)) == 4
        assert time.monotonic() - t0 < 0.5  # submitting never waits on the webhook
        assert receiver.wait_for(lambda: receiver.refused > 0, timeout=10)  # it failed once
        receiver.status = 200
        assert receiver.wait_for(lambda: len(receiver.requests) >= 8, timeout=20)
    finally:
        dispatcher.stop()
    assert dispatcher.pending() == 0
    paths = [r.path for r in receiver.requests]
    assert sorted(set(paths)) == ["/am/api/v2/alerts", "/hook", "/pd", "/slack"]
    assert all(paths.count(p) == 2 for p in set(paths))  # firing + resolved, once each

    hooks = [(r.headers, r.body) for r in receiver.at("/hook")]
    for headers, body in hooks:
        assert verify_signature(
            b"s3cret", body, headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER], now=time.time()
        )
    generic = [json.loads(b) for _, b in hooks]
    assert [g["status"] for g in generic] == ["firing", "resolved"]
    alert_id = generic[0]["id"]
    pd = receiver.bodies("/pd")
    assert [(e["event_action"], e["dedup_key"], e["routing_key"]) for e in pd] == [
        ("trigger", alert_id, "R0UTE"),
        ("resolve", alert_id, "R0UTE"),
    ]
    slack = receiver.bodies("/slack")
    assert "[CRITICAL]" in slack[0]["text"]
    assert "[RESOLVED]" in slack[1]["text"]
    am = receiver.bodies("/am/api/v2/alerts")
    assert am[0][0]["labels"]["alert_id"] == alert_id
    assert am[1][0]["endsAt"] == generic[1]["ended_at"]


# -- Prometheus and Alertmanager ---------------------------------------------------


class _Metrics:
    """A tiny /metrics endpoint on 127.0.0.1 with the service's drift gauge."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.drift = Gauge(
            "driftwarden_drift_detected",
            "Drift verdict",
            ["stream", "field", "detector"],
            registry=self.registry,
        )
        registry = self.registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,))
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def metrics() -> Iterator[_Metrics]:
    m = _Metrics()
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def stack(tmp_path: Path, receiver: Receiver, metrics: _Metrics) -> Iterator[dict[str, Any]]:
    """Prometheus (1 s scrape/eval, the real rules with ``for: 0s``) and Alertmanager
    (group_wait 1 s) routing to the receiver's /alerts."""
    target = f"127.0.0.1:{metrics.port}"
    with prometheus_stack(tmp_path, target, f"{receiver.url}/alerts") as urls:
        yield urls


def _am_notifications(receiver: Receiver, alertname: str, status: str) -> list[dict[str, Any]]:
    found = []
    for payload in receiver.bodies("/alerts"):
        for a in payload["alerts"]:
            if a["labels"].get("alertname") == alertname and a["status"] == status:
                found.append(a)
    return found


@pytest.mark.integration
@pytest.mark.slow
def test_prometheus_rule_reaches_receiver_through_alertmanager(
    stack: dict[str, Any], metrics: _Metrics, receiver: Receiver, finding: MakeFinding
) -> None:
    t0 = time.monotonic()
    metrics.drift.labels("sensors", "temperature", "ks").set(1)
    metrics.drift.labels("sensors", "humidity", "ks").set(0)
    assert receiver.wait_for(
        lambda: bool(_am_notifications(receiver, "DriftwardenDriftDetected", "firing")), 60
    ), "no firing notification from Alertmanager within 60 s"
    fired_after = time.monotonic() - t0
    (alert,) = _am_notifications(receiver, "DriftwardenDriftDetected", "firing")
    assert alert["labels"]["field"] == "temperature"
    assert alert["labels"]["severity"] == "warning"

    metrics.drift.labels("sensors", "temperature", "ks").set(0)
    t1 = time.monotonic()
    assert receiver.wait_for(
        lambda: bool(_am_notifications(receiver, "DriftwardenDriftDetected", "resolved")), 60
    ), "no resolved notification from Alertmanager within 60 s"
    resolved_after = time.monotonic() - t1

    # driftwarden's own alertmanager sink, into the real Alertmanager's v2 API
    config = _config("http://127.0.0.1:9", am=stack["am"])
    engine = AlertEngine(config)
    dispatcher = WebhookDispatcher(
        [e for e in endpoints_from_config(config) if e.name == "alertmanager-3"]
    )
    out = engine.observe([finding(True, stream="loans", subject="salary")], now=time.time())
    t2 = time.monotonic()
    assert dispatcher.submit_all(
        d for d in deliveries_for(out.alerts, config, time.time()) if d.sink == "alertmanager-3"
    )
    assert dispatcher.pump() == 1
    assert receiver.wait_for(
        lambda: bool(_am_notifications(receiver, "DriftwardenDrift", "firing")), 60
    ), "the service's own alert did not come through Alertmanager within 60 s"
    own_after = time.monotonic() - t2
    (own,) = _am_notifications(receiver, "DriftwardenDrift", "firing")
    assert own["labels"]["alert_id"] == out.alerts[0].id
    print(
        f"\nrule->Alertmanager->receiver: firing {fired_after:.1f}s, resolved "
        f"{resolved_after:.1f}s; service alert via Alertmanager {own_after:.1f}s"
    )
