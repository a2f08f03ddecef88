"""Every Prometheus metric driftwarden exports, on an injected registry.

Names follow Prometheus conventions (snake_case, base units, ``_total`` counters)
under the ``driftwarden_`` prefix. Labels are bounded sets only: stream, field,
detector, model, severity, status, reason, sink, topic, partition, stage. Never
entity ids or free text. Metrics are updated once per batch, never per event.

The HTTP endpoint serves ``/metrics`` (text exposition), ``/healthz`` (the
process is alive) and ``/readyz`` (assigned partitions and a reachable broker).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["Metrics", "MetricsServer"]

_BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The service's metric families, built against ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "driftwarden_events", "Events consumed, valid or not", ["stream", "topic"], registry=r
        )
        self.invalid_events = Counter(
            "driftwarden_invalid_events",
            "Events rejected and dead-lettered, by reason code",
            ["stream", "reason"],
            registry=r,
        )
        self.dead_letters = Counter(
            "driftwarden_dead_letters",
            "Dead-letter records acknowledged by the broker",
            ["stream"],
            registry=r,
        )
        self.field_nulls = Counter(
            "driftwarden_field_nulls",
            "Accepted events whose field was null or missing",
            ["stream", "field"],
            registry=r,
        )
        self.null_ratio = Gauge(
            "driftwarden_null_ratio",
            "Share of accepted events of the last batch whose field was null or missing",
            ["stream", "field"],
            registry=r,
        )
        self.batch_duration = Histogram(
            "driftwarden_batch_duration_seconds",
            "Wall time to process one consumed batch, from decode to commit",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_events = Histogram(
            "driftwarden_batch_events",
            "Events per consumed batch",
            buckets=(1, 10, 100, 1000, 5000, 10000, 50000, 100000),
            registry=r,
        )
        self.stage_seconds = Counter(
            "driftwarden_stage_seconds",
            "Time spent per pipeline stage",
            ["stage"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "driftwarden_consumer_lag",
            "Messages between the high watermark and the next offset to process",
            ["topic", "partition"],
            registry=r,
        )
        self.last_processed = Gauge(
            "driftwarden_last_processed_timestamp_seconds",
            "Wall-clock time of the last processed batch",
            ["stream"],
            registry=r,
        )
        self.last_event_time = Gauge(
            "driftwarden_last_event_timestamp_seconds",
            "Largest event time seen",
            ["stream"],
            registry=r,
        )
        self.entities = Gauge(
            "driftwarden_entities",
            "Distinct entities tracked",
            ["stream"],
            registry=r,
        )
        self.entity_overflow = Counter(
            "driftwarden_entity_overflow_events",
            "Events whose entity did not fit the max_entities bound",
            ["stream"],
            registry=r,
        )
        self.decode_fallback = Counter(
            "driftwarden_decode_fallback",
            "Events the compiled decoder handed to the msgspec decoder (escapes, numbers "
            "off the exact path, values new to a vocabulary, invalid events)",
            ["stream"],
            registry=r,
        )
        self.drift_statistic = Gauge(
            "driftwarden_drift_statistic",
            "Latest drift statistic per field and detector",
            ["stream", "field", "detector"],
            registry=r,
        )
        self.drift_threshold = Gauge(
            "driftwarden_drift_threshold",
            "Threshold the drift statistic is judged against",
            ["stream", "field", "detector"],
            registry=r,
        )
        self.drift_p_value = Gauge(
            "driftwarden_drift_p_value",
            "Latest p-value per field and detector, where meaningful",
            ["stream", "field", "detector"],
            registry=r,
        )
        self.drift_detected = Gauge(
            "driftwarden_drift_detected",
            "1 while the latest verdict is drift, else 0",
            ["stream", "field", "detector"],
            registry=r,
        )
        self.adwin_changes = Counter(
            "driftwarden_adwin_changes",
            "Change points ADWIN detected",
            ["stream", "field"],
            registry=r,
        )
        self.baseline_ready = Gauge(
            "driftwarden_baseline_ready",
            "1 once the stream's baseline is loaded or built",
            ["stream"],
            registry=r,
        )
        self.alerts = Counter(
            "driftwarden_alerts",
            "Alert messages emitted",
            ["stream", "detector", "severity", "status"],
            registry=r,
        )
        self.alerts_firing = Gauge(
            "driftwarden_alerts_firing",
            "Alert episodes currently firing",
            ["stream", "severity"],
            registry=r,
        )
        self.retrain_requests = Counter(
            "driftwarden_retrain_requests",
            "Retrain requests published",
            ["model"],
            registry=r,
        )
        self.sink_sent = Counter(
            "driftwarden_sink_sent", "Deliveries acknowledged by a sink", ["sink"], registry=r
        )
        self.sink_failed = Counter(
            "driftwarden_sink_failed",
            "Failed delivery attempts (each retry counts)",
            ["sink", "reason"],
            registry=r,
        )
        self.sink_dropped = Counter(
            "driftwarden_sink_dropped",
            "Deliveries given up because a sink's queue overflowed",
            ["sink"],
            registry=r,
        )
        self.sink_queued = Gauge(
            "driftwarden_sink_queued", "Deliveries waiting in a sink's queue", ["sink"], registry=r
        )
        self.sink_latency = Histogram(
            "driftwarden_sink_latency_seconds",
            "Time from send to acknowledgement per delivery",
            ["sink"],
            registry=r,
        )
        self.checkpoint_age = Gauge(
            "driftwarden_checkpoint_age_seconds",
            "Seconds since the partition's state was last checkpointed",
            ["stream", "partition"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "driftwarden_assigned_partitions", "Partitions assigned to this process", registry=r
        )
        self.ready = Gauge(
            "driftwarden_ready", "1 when the service is consuming, 0 when not ready", registry=r
        )
        self.kafka_errors = Counter(
            "driftwarden_kafka_errors",
            "Errors reported by the Kafka client",
            ["kind"],
            registry=r,
        )

    def render(self) -> bytes:
        """The text exposition of every metric in the registry."""
        return bytes(generate_latest(self.registry))


class MetricsServer:
    """/metrics, /healthz and /readyz on a background thread.

    ``ready`` is called on each /readyz request; a true answer gives 200.
    """

    def __init__(
        self, metrics: Metrics, host: str, port: int, ready: Callable[[], bool] = lambda: True
    ) -> None:
        self.metrics = metrics
        self._ready = ready
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._reply(200, server.metrics.render(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._reply(200, b"ok\n")
                elif path == "/readyz":
                    ok = server._ready()
                    self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._reply(404, b"not found\n")

            def _reply(
                self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8"
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # scrapes every few seconds would flood the log

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="metrics", daemon=True
        )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for a serve loop that never ran
            self._httpd.shutdown()
        self._httpd.server_close()
