"""Findings to alerts, wired: the engine, the Kafka topics, the webhooks and their metrics.

The runner calls ``handle`` once per batch with the batch's findings; the alert and
retrain messages it returns go through the same producer as the dead letters, so
the batch's offsets are committed only once they are durable. Webhook deliveries
are queued to the dispatcher's own thread: a dead on-call endpoint never stalls
consumption, and retries with backoff until it answers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from connectors.base import OutMessage
from connectors.webhook import RetryPolicy, WebhookDispatcher, WebhookObserver
from detectors.base import Finding, Verdicts
from monitor.alerting.engine import AlertEngine, to_out_messages
from monitor.alerting.formats import deliveries_for, endpoints_from_config
from monitor.alerting.state import (
    alert_ids,
    engine_part,
    merge_engine,
    merge_webhooks,
    webhooks_part,
)
from monitor.checkpoints import AlertState
from monitor.config.alerts import AlertsConfig, Severity
from monitor.config.schema import Config
from monitor.metrics import Metrics
from monitor.status import StatusBoard

__all__ = ["AlertingHandler", "PrometheusWebhookObserver", "build_findings_handler"]

log = logging.getLogger("driftwarden.alerts")


class PrometheusWebhookObserver(WebhookObserver):
    """Per-sink delivery metrics (sink names, never URLs, as labels)."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def on_sent(self, sink: str, latency_s: float) -> None:
        self.metrics.sink_sent.labels(sink).inc()
        self.metrics.sink_latency.labels(sink).observe(latency_s)

    def on_failed(self, sink: str, reason: str) -> None:
        self.metrics.sink_failed.labels(sink, reason).inc()

    def on_queued(self, sink: str, depth: int) -> None:
        self.metrics.sink_queued.labels(sink).set(depth)

    def on_dropped(self, sink: str) -> None:
        self.metrics.sink_dropped.labels(sink).inc()


class AlertingHandler:
    """The runner's findings handler: alert lifecycle, topics, webhooks, metrics."""

    def __init__(
        self,
        config: AlertsConfig,
        metrics: Metrics,
        retrain_models: dict[str, tuple[str, str]],
        retrain_on: dict[str, tuple[tuple[str, ...], Severity | None]] | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.engine = AlertEngine(config, retrain_models=retrain_models)
        self.engine.retrain_on = dict(retrain_on or {})
        delivery = config.delivery
        self.dispatcher = WebhookDispatcher(
            endpoints_from_config(config),
            observer=PrometheusWebhookObserver(metrics),
            retry=RetryPolicy(
                delivery.backoff_initial, delivery.backoff_max, delivery.max_attempts
            ),
        )
        self.dispatcher.start()
        self.board: StatusBoard | None = None  # the /status page's view of firing alerts
        self._streams: dict[str, str] = {}  # alert id -> stream, for per-stream state

    def handle(
        self, findings: list[Finding], now: float, verdicts: Sequence[tuple[int, Verdicts]] = ()
    ) -> list[OutMessage]:
        outcome = self.engine.observe(findings, now, verdicts)
        if not outcome:
            return []
        m = self.metrics
        if self.board is not None:
            self.board.record_alerts(outcome.alerts)
        for alert in outcome.alerts:
            m.alerts.labels(alert.stream, alert.detector, alert.severity, alert.status).inc()
            log.info(
                "alert %s %s [%s] %s (id %s)",
                alert.status.upper(),
                alert.severity,
                alert.stream,
                alert.summary,
                alert.id[:12],
            )
        for request in outcome.retrain_requests:
            m.retrain_requests.labels(request.model).inc()
            log.info(
                "retrain request for model %s version %s: %s (trigger %s)",
                request.model,
                request.version,
                request.reason,
                request.trigger_id[:12],
            )
        firing = self.engine.firing_counts()
        for (stream, severity), count in firing.items():
            m.alerts_firing.labels(stream, severity).set(count)
        for alert in outcome.alerts:
            if (alert.stream, alert.severity) not in firing:
                m.alerts_firing.labels(alert.stream, alert.severity).set(0)
        for alert in outcome.alerts:
            self._streams[alert.id] = alert.stream
        self.dispatcher.submit_all(deliveries_for(outcome.alerts, self.config, now))
        return to_out_messages(outcome, self.config)

    def _ids(self, stream: str, engine: Mapping[str, Any]) -> set[str]:
        ids = {i for i, s in self._streams.items() if s == stream}
        return ids | alert_ids(engine_part(engine, stream, None))

    def state(self, stream: str) -> AlertState:
        """``stream``'s alert episodes and pending webhook deliveries, for its checkpoint."""
        engine = self.engine.state()
        webhooks = self.dispatcher.state()
        # Forget the streams of alerts neither open nor remembered by the dispatcher.
        known = alert_ids(engine) | {
            key.rpartition(":")[0]
            for s in webhooks["sinks"].values()
            for key in [*s["delivered"], *(d["key"] for d in s["pending"])]
        }
        self._streams = {i: s for i, s in self._streams.items() if i in known}
        ids = self._ids(stream, engine)
        return AlertState(
            engine_part(engine, stream, self.engine.retrain_models.get(stream)),
            webhooks_part(webhooks, ids),
        )

    def restore(self, stream: str, state: AlertState) -> None:
        """Continue ``stream``'s open episodes and redeliver what was still queued."""
        model = self.engine.retrain_models.get(stream)
        current = self.engine.state()
        part = engine_part(state.engine, stream, model)  # also from a whole engine's state
        ids = self._ids(stream, current) | alert_ids(part)
        for sink in state.webhooks.get("sinks", {}).values():
            ids |= {d["alert_id"] for d in sink["pending"]}
            ids |= {key.rpartition(":")[0] for key in sink["delivered"]}
        self.engine.restore(merge_engine(current, stream, part, model))
        self.dispatcher.restore(merge_webhooks(self.dispatcher.state(), state.webhooks, ids))
        for i in ids:
            self._streams[i] = stream

    def release(self, stream: str) -> None:
        """Forget ``stream``'s alert state: another process judges it now."""
        empty = engine_part({}, stream, None)
        self.restore(stream, AlertState(empty, {"sinks": {}}))
        self._streams = {i: s for i, s in self._streams.items() if s != stream}

    def close(self) -> None:
        self.dispatcher.stop()


def build_findings_handler(config: Config, metrics: Metrics) -> AlertingHandler | None:
    """The handler for ``config``'s ``alerts:`` section, or None without one."""
    if config.alerts is None:
        return None
    alerts = config.alerts
    models = {
        s.name: (s.model.name, s.model.version or "unversioned") for s in config.streams if s.model
    }
    retrain_on: dict[str, tuple[tuple[str, ...], Severity | None]] = {
        s.name: (tuple(s.model.retrain_on), s.model.retrain_severity)
        for s in config.streams
        if s.model
    }
    return AlertingHandler(alerts, metrics, models, retrain_on)
