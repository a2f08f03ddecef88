"""Every Prometheus metric driftwarden exports, on an injected registry.

Names follow Prometheus conventions (snake_case, base units, ``_total`` counters)
under the ``driftwarden_`` prefix. Labels are bounded sets only: stream, field,
detector, model, severity, status, reason, sink, topic, partition, stage. Never
entity ids or free text. Metrics are updated once per batch, never per event.

The HTTP endpoint serves ``/metrics`` (text exposition), ``/healthz`` (the
process is alive), ``/readyz`` (assigned partitions and a reachable broker) and
extra pages such as ``/status`` and ``/status.json`` (behind the optional bearer
token).
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from monitor.errors import ConfigError

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
            "Events dead-lettered (rejected, or with excluded values), by (first) reason code",
            ["stream", "reason"],
            registry=r,
        )
        self.dead_letters = Counter(
            "driftwarden_dead_letters",
            "Dead-letter records acknowledged by the broker",
            ["stream"],
            registry=r,
        )
        self.dead_letters_truncated = Counter(
            "driftwarden_dead_letters_truncated",
            "Dead letters cut to dead_letter_max_bytes (headers keep original size and sha256)",
            ["stream"],
            registry=r,
        )
        self.field_violations = Counter(
            "driftwarden_field_violations",
            "Values excluded from a field's statistics (the rest of the event counts), by reason",
            ["stream", "field", "reason"],
            registry=r,
        )
        self.limit_hits = Counter(
            "driftwarden_limit_hits",
            "Events or values that hit a configured limit (max_depth, max_fields, ...)",
            ["stream", "limit"],
            registry=r,
        )
        self.produce_failures = Counter(
            "driftwarden_produce_failures",
            "Outgoing records (dead letters, alerts) the broker refused; retried, the commit waits",
            ["topic", "reason"],
            registry=r,
        )
        self.stage_errors = Counter(
            "driftwarden_stage_errors",
            "Batches a stage failed on (its events are dead-lettered as stage_error; the "
            "stream goes on)",
            ["stream", "stage"],
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
        self.poll_seconds = Counter(
            "driftwarden_poll_seconds",
            "Seconds the main loop spent in the source's poll, waiting for records and "
            "taking them; a large share of wall time means fetching, not the stages, "
            "bounds the rate",
            registry=r,
        )
        self.batches_apart = Counter(
            "driftwarden_batches_apart",
            "Batches whose drift stage ran on its worker thread while the main loop read "
            "and decoded the next batch (reading a backlog on the direct path)",
            registry=r,
        )
        self.fetch_queued_bytes = Gauge(
            "driftwarden_fetch_queued_bytes",
            "Record bytes fetched ahead and not yet processed (direct fetch); the "
            "fetcher waits at queued.max.messages.kbytes",
            registry=r,
        )
        self.fetch_requests = Counter(
            "driftwarden_fetch_requests",
            "Fetch requests answered by the brokers (direct fetch)",
            registry=r,
        )
        self.fetch_bytes = Counter(
            "driftwarden_fetch_bytes",
            "Record bytes delivered by fetch responses (direct fetch)",
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
        # Fleet health (monitor/pipeline/fleet.py): per stream and condition, never per device.
        self.fleet_unhealthy = Gauge(
            "driftwarden_fleet_unhealthy_devices",
            "Devices for which a condition (silent, stuck, ...) holds at the last evaluation",
            ["stream", "condition"],
            registry=r,
        )
        self.fleet_healthy = Gauge(
            "driftwarden_fleet_healthy_devices",
            "Tracked devices with no condition at the last evaluation",
            ["stream"],
            registry=r,
        )
        self.fleet_tracked = Gauge(
            "driftwarden_fleet_tracked_devices",
            "Devices whose state this process keeps",
            ["stream"],
            registry=r,
        )
        self.fleet_detections = Counter(
            "driftwarden_fleet_detections",
            "Onsets of a device condition",
            ["stream", "condition"],
            registry=r,
        )
        self.fleet_evicted = Counter(
            "driftwarden_fleet_evicted_devices",
            "Devices evicted (longest silent first) to stay within fleet.max_entities",
            ["stream"],
            registry=r,
        )
        self.fleet_rejected = Counter(
            "driftwarden_fleet_rejected_events",
            "Events of devices that could not be tracked (no room, or no entity code)",
            ["stream"],
            registry=r,
        )
        self.fleet_late = Counter(
            "driftwarden_fleet_late_events",
            "Events older than their partition's watermark minus the allowed lateness",
            ["stream"],
            registry=r,
        )
        self.kafka_errors = Counter(
            "driftwarden_kafka_errors",
            "Errors reported by the Kafka client",
            ["kind"],
            registry=r,
        )
        # -- model monitoring (monitor/pipeline/model.py) --
        self.model_labels = Counter(
            "driftwarden_model_labels",
            "Label join outcomes: joined, expired, orphan, late, duplicate_labels, "
            "duplicate_predictions, dropped, unusable_predictions (no readable request id, "
            "score or version)",
            ["stream", "model", "outcome"],
            registry=r,
        )
        self.model_pending = Gauge(
            "driftwarden_model_pending_predictions",
            "Predictions waiting for their label in this process",
            ["stream", "model"],
            registry=r,
        )
        self.model_held_labels = Gauge(
            "driftwarden_model_held_labels",
            "Labels that arrived before their prediction, waiting in this process",
            ["stream", "model"],
            registry=r,
        )
        self.model_state_bytes = Gauge(
            "driftwarden_model_join_bytes",
            "Bytes of the label join tables in this process",
            ["stream", "model"],
            registry=r,
        )
        self.model_quality = Gauge(
            "driftwarden_model_quality",
            "Model quality of the latest window; source is realized (labels), estimated "
            "(CBPE, before labels) or reference",
            ["stream", "model", "version", "metric", "source"],
            registry=r,
        )
        self.model_estimate_error = Gauge(
            "driftwarden_model_estimate_error",
            "CBPE estimate minus realized quality on the latest joined window",
            ["stream", "model", "version", "metric"],
            registry=r,
        )

    def render(self) -> bytes:
        """The text exposition of every metric in the registry."""
        return bytes(generate_latest(self.registry))


class MetricsServer:
    """/metrics, /healthz, /readyz and extra ``pages`` on a background thread.

    ``ready`` is called on each /readyz request; a true answer gives 200. ``pages``
    maps further paths (/status, /status.json) to their renderers. With a ``token``,
    every path but /metrics, /healthz and
    /readyz needs ``Authorization: Bearer <token>`` (401 otherwise). Binding happens
    in the constructor, so a port in use fails before anything else starts: the
    ``OSError`` is turned into a :class:`~monitor.errors.ConfigError` naming the
    address and ``setting`` (the configuration key to change).
    """

    OPEN_PATHS = frozenset({"/metrics", "/healthz", "/readyz"})

    def __init__(
        self,
        metrics: Metrics,
        host: str,
        port: int,
        ready: Callable[[], bool] = lambda: True,
        pages: Mapping[str, Callable[[], tuple[bytes, str]]] | None = None,
        *,
        token: str | None = None,
        setting: str = "metrics.listen",
    ) -> None:
        self.metrics = metrics
        self._ready = ready
        # Extra GET paths (e.g. /status): path -> () -> (body, content type).
        self.pages = dict(pages or {})
        expected = f"Bearer {token}".encode() if token else None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path not in server.OPEN_PATHS and expected is not None:
                    given = self.headers.get("Authorization", "").encode("latin-1", "replace")
                    if not hmac.compare_digest(given, expected):
                        self._reply(401, b"unauthorized\n", www_authenticate=True)
                        return
                if path == "/metrics":
                    self._reply(200, server.metrics.render(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._reply(200, b"ok\n")
                elif path == "/readyz":
                    ok = server._ready()
                    self._reply(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                elif path in server.pages:
                    body, ctype = server.pages[path]()
                    self._reply(200, body, ctype)
                else:
                    self._reply(404, b"not found\n")

            def _reply(
                self,
                code: int,
                body: bytes,
                ctype: str = "text/plain; charset=utf-8",
                www_authenticate: bool = False,
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                if www_authenticate:
                    self.send_header("WWW-Authenticate", 'Bearer realm="driftwarden"')
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # scrapes every few seconds would flood the log

        try:
            self._httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(
                f"cannot serve metrics on {host}:{port}: {reason}; "
                f"choose another address or port with {setting}"
            ) from None
        self._httpd.daemon_threads = True
        # serve_forever checks for shutdown every poll_interval (default 0.5 s), which
        # stop() waits for: a shorter one ends the service without that pause.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="metrics", daemon=True
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
