"""The assembled service: runner, metrics endpoint and the stages configured per stream."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from connectors.base import MessageSink
from connectors.kafka import client_options
from monitor.config import Config
from monitor.metrics import Metrics, MetricsServer
from monitor.pipeline import FindingStage, StreamPipeline
from monitor.runner import BatchSource, FindingsHandler, Runner, RunStats

__all__ = ["Service", "ensure_topics"]

log = logging.getLogger("driftwarden.service")


def ensure_topics(options: Mapping[str, Any], topics: list[str], timeout: float = 10.0) -> None:
    """Create the output topics that do not exist yet (one partition each).

    Lacking the permission to create topics is not fatal: production clusters
    usually create them through their own tooling.
    """
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient(client_options(options))
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [t for t in dict.fromkeys(topics) if t and t not in existing]
    if not missing:
        return
    futures = admin.create_topics([NewTopic(t, 1, 1) for t in missing], request_timeout=timeout)
    for topic, future in futures.items():
        try:
            future.result(timeout)
            log.info("created topic %s", topic)
        except Exception as exc:
            log.warning("could not create topic %s: %s", topic, exc)


def _default_stages(config: Config) -> Callable[[StreamPipeline], list[FindingStage]] | None:
    try:
        from monitor.drift import drift_stages
    except ImportError:  # pragma: no cover - the drift stage ships with the package
        return None
    return drift_stages


class Service:
    """Everything ``driftwarden run`` starts, in the right order."""

    def __init__(
        self,
        config: Config,
        *,
        registry: CollectorRegistry | None = None,
        source: BatchSource | None = None,
        sink: MessageSink | None = None,
        findings_handler: FindingsHandler | None = None,
    ) -> None:
        self.config = config
        self.metrics = Metrics(registry)
        if source is None:
            ensure_topics(dict(config.kafka), self._output_topics())
        if findings_handler is None:
            findings_handler = _default_findings_handler(config, self.metrics)
        self.runner = Runner(
            config,
            metrics=self.metrics,
            source=source,
            sink=sink,
            stages=_default_stages(config),
            findings_handler=findings_handler,
        )
        self.server: MetricsServer | None = None
        if config.metrics.enabled:
            self.server = MetricsServer(
                self.metrics, config.metrics.host, config.metrics.port, ready=self.runner.ready
            )

    def _output_topics(self) -> list[str]:
        topics = [self.config.dead_letter_topic]
        alerts = self.config.alerts
        if alerts is not None:
            topics += [t for t in (alerts.topic, alerts.retrain_topic) if t]
        return topics

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        return self.server.address if self.server is not None else None

    def stop(self) -> None:
        self.runner.stop()

    def close(self) -> None:
        """Release everything without running (``run`` closes by itself)."""
        self.runner.close()
        if self.server is not None:
            self.server.stop()

    def run(
        self,
        *,
        max_seconds: float | None = None,
        until: Callable[[RunStats], bool] | None = None,
        on_summary: Callable[[str], None] | None = None,
    ) -> RunStats:
        if self.server is not None:
            self.server.start()
            host, port = self.server.address
            log.info("metrics on http://%s:%d/metrics", host, port)
        try:
            return self.runner.run(max_seconds=max_seconds, until=until, on_summary=on_summary)
        finally:
            if self.server is not None:
                self.server.stop()


def _default_findings_handler(config: Config, metrics: Metrics) -> FindingsHandler | None:
    try:
        from monitor.alerting import build_findings_handler
    except ImportError:  # pragma: no cover - alerting ships with the package
        return None
    return build_findings_handler(config, metrics)
