"""``make demo``: embedded broker, drifting synthetic fleet and the monitor, bounded in time."""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from connectors.kafka import ensure_topics
from monitor.config.schema import Config, parse_config
from monitor.dev.fleet_demo import demo_failures, demo_fleet_stream, produce_demo_fleet
from monitor.dev.producing import produce_waiting
from monitor.dev.synthetic import DEMO_STREAM, generate_fleet
from monitor.errors import DriftwardenError

__all__ = ["WebhookReceiver", "create_topic", "demo_config", "produce_fleet", "run_demo"]

log = logging.getLogger("driftwarden.demo")


def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    """Create ``topic`` unless it exists."""
    if ensure_topics({"bootstrap.servers": bootstrap}, [topic], partitions=partitions):
        raise DriftwardenError(f"could not create topic {topic}")


def produce_fleet(
    bootstrap: str,
    topic: str,
    *,
    events: int,
    rate: float = 0.0,
    drift_at: int | None = None,
    drift_until: int | None = None,
    partitions: int = 3,
    seed: int = 7,
    chunk: int = 2_000,
    stop: threading.Event | None = None,
    bad_rate: float = 0.03,
) -> int:
    """Produce ``events`` synthetic fleet events (``rate`` per second, 0 = unthrottled)."""
    from confluent_kafka import Producer

    create_topic(bootstrap, topic, partitions)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 10, "enable.idempotence": True}
    )
    started = time.monotonic()
    produced = 0
    try:
        while produced < events and not (stop is not None and stop.is_set()):
            n = min(chunk, events - produced)
            batch = generate_fleet(
                n,
                seed=seed,
                start_index=produced,
                drift_at=drift_at,
                drift_until=drift_until,
                bad_rate=bad_rate,
            )
            for value, key in zip(batch.values, batch.keys, strict=True):
                produce_waiting(producer, topic, value=value, key=key)
            producer.poll(0)
            produced += n
            if rate > 0:
                ahead = produced / rate - (time.monotonic() - started)
                if ahead > 0:
                    if stop is not None:
                        stop.wait(ahead)
                    else:
                        time.sleep(ahead)
    finally:
        producer.flush(30)
    return produced


def demo_config(
    bootstrap: str,
    metrics_port: int,
    baseline_events: int = 20_000,
    webhook_url: str | None = None,
    extra_streams: list[dict[str, Any]] | None = None,
) -> Config:
    """The demo's configuration (the same shape as deploy/examples/sensors.yaml)."""
    sinks = []
    if webhook_url:
        sinks.append({"type": "webhook", "url": webhook_url, "secret": "demo", "name": "on-call"})
    raw: dict[str, Any] = {
        "kafka": {"bootstrap.servers": bootstrap, "session.timeout.ms": 6000},
        "group": "driftwarden-demo",
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "summary_interval": "3s",
        "dead_letter_topic": "driftwarden.dlq",
        "streams": [
            {
                **DEMO_STREAM,
                "baseline": {"first_events": baseline_events},
                "window": {"events": 5000, "step": 1000},
                "model": {"name": "sensor-anomaly", "version": "3"},
            },
            demo_fleet_stream(),
            *(extra_streams or []),
        ],
        "alerts": {
            "topic": "driftwarden.alerts",
            "retrain_topic": "ml.retrain.requests",
            "cooldown": "10s",
            "resolve_after": 3,
            "severities": {"adwin": "info"},
            "retrain": {"min_severity": "warning", "cooldown": "1m"},
            "sinks": sinks,
        },
    }
    return parse_config(yaml.safe_load(yaml.safe_dump(raw)), env={})


def run_demo(seconds: float = 60.0, rate: float = 5000.0, metrics_port: int = 9108) -> int:
    """Run the whole demo for ``seconds`` and print what happened."""
    from connectors.embedded import EmbeddedBroker
    from monitor.dev.model_demo import model_demo_stream, produce_model, write_reference
    from monitor.runtime.service import Service
    from monitor.runtime.signals import install_stop

    total = int(seconds * rate)
    drift_at, drift_until = int(total * 0.4), int(total * 0.7)
    model_rate = 1000.0
    model_events = int(seconds * model_rate)
    receiver = WebhookReceiver().start()
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        print(f"broker: embedded Kafka-protocol broker on {broker.bootstrap}", flush=True)
        print(f"on-call: a local webhook receiver on {receiver.url}", flush=True)
        config = demo_config(
            broker.bootstrap,
            metrics_port,
            baseline_events=min(20_000, drift_at // 2),
            webhook_url=receiver.url,
            extra_streams=[model_demo_stream(write_reference(Path(tmp)))],
        )
        stop = threading.Event()
        create_topic(broker.bootstrap, "iot.sensors", 3)
        producer = threading.Thread(
            target=produce_fleet,
            kwargs={
                "bootstrap": broker.bootstrap,
                "topic": "iot.sensors",
                "events": total,
                "rate": rate,
                "drift_at": drift_at,
                "drift_until": drift_until,
                "stop": stop,
            },
            name="producer",
            daemon=True,
        )
        producer.start()
        create_topic(broker.bootstrap, "iot.fleet", 3)
        fleet_producer = threading.Thread(
            target=produce_demo_fleet,
            args=(broker.bootstrap, "iot.fleet", seconds, stop),
            name="fleet-producer",
            daemon=True,
        )
        fleet_producer.start()
        for f in demo_failures(seconds):
            print(
                f"fleet: {len(f.devices)} device(s) of 200 go {f.condition} at +{f.at:.0f}s",
                flush=True,
            )
        model_producer = threading.Thread(
            target=produce_model,
            kwargs={
                "bootstrap": broker.bootstrap,
                "events": model_events,
                "rate": model_rate,
                "drift_at": model_events // 2,
                "stop": stop,
            },
            name="model-producer",
            daemon=True,
        )
        model_producer.start()
        print(
            f"producer: model 'loans', {model_rate:,.0f} predictions/s, labels ~8s later, "
            f"inputs drift from prediction {model_events // 2:,}",
            flush=True,
        )
        print(
            f"producer: 100 devices, {rate:,.0f} events/s for {seconds:.0f}s, ~3% bad records, "
            f"vibration and status drift from event {drift_at:,} to {drift_until:,}",
            flush=True,
        )
        service = Service(config)
        host, port = service.metrics_address or ("127.0.0.1", metrics_port)
        print(
            f"monitor: metrics on http://{host}:{port}/metrics (also /healthz, /readyz)", flush=True
        )

        def stop_all() -> None:
            stop.set()
            service.stop()

        install_stop(stop_all)
        stats = service.run(
            max_seconds=seconds + 10, on_summary=lambda s: print("monitor:", s, flush=True)
        )
        stop.set()
        producer.join(10)
        fleet_producer.join(10)
        fleet_status = service.fleet_status()
        model_producer.join(10)
        alerts = _read_all(broker.bootstrap, "driftwarden.alerts")
        retrains = _read_all(broker.bootstrap, "ml.retrain.requests")
    receiver.stop()
    print(
        f"done: events={stats.events:,} accepted={stats.accepted:,} invalid={stats.invalid:,} "
        f"by reason={dict(sorted(stats.rejected.items()))}",
        flush=True,
    )
    print(f"alerts topic: {len(alerts)} message(s)", flush=True)
    for a in alerts:
        print(f"  {a['status']:<8} {a['severity']:<8} {a['summary']}", flush=True)
    outcomes = ("joined", "expired", "late", "duplicate_labels", "orphan", "dropped")
    counts = {
        k: int(
            service.metrics.registry.get_sample_value(
                "driftwarden_model_labels_total",
                {"stream": "loans-model", "model": "loans", "outcome": k},
            )
            or 0
        )
        for k in outcomes
    }
    print(f"model loans: label join {counts}", flush=True)
    print(f"retrain topic: {len(retrains)} request(s)", flush=True)
    for r in retrains:
        print(f"  model {r['model']} v{r['version']}: {r['reason']}", flush=True)
        if evidence := r.get("evidence"):
            features = ", ".join(f["subject"] for f in evidence["features"]) or "none"
            print(
                f"    evidence: {evidence['detector']} {evidence['metric'] or ''}; "
                f"features by drift: {features}",
                flush=True,
            )
    print(f"webhook receiver: {len(receiver.received)} signed delivery(ies)", flush=True)
    for stream, doc in fleet_status["streams"].items():
        print(
            f"fleet {stream}: {doc['tracked']} devices, {doc['healthy']} healthy, "
            f"unhealthy by condition {doc['unhealthy']}",
            flush=True,
        )
        for condition, worst in doc["worst"].items():
            names = ", ".join(d["entity"] for d in worst[:10])
            print(f"  {condition:<13} worst: {names or '-'}", flush=True)
    return 0


class WebhookReceiver:
    """A local on-call endpoint for the demo: prints what it receives."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.received: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    doc = json.loads(body)
                except ValueError:
                    doc = {}
                receiver.received.append(doc)
                signed = "signed" if self.headers.get("X-Driftwarden-Signature") else "unsigned"
                print(
                    f"webhook: {signed} {doc.get('status', '?')} {doc.get('summary', '')}",
                    flush=True,
                )
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/alerts"

    def start(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _read_all(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"demo-reader-{time.time_ns()}",
            "enable.auto.commit": False,
        }
    )
    out: list[dict[str, Any]] = []
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            msgs = consumer.consume(1000, 0.5)
            if not msgs:
                break
            values = [m.value() for m in msgs if m.error() is None]
            out += [json.loads(v) for v in values if v]
    finally:
        consumer.close()
    return out
