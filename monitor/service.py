"""The assembled service: runner, metrics endpoint and the stages configured per stream."""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from connectors.base import MessageSink
from connectors.kafka import ensure_topics
from monitor.alerting import build_findings_handler
from monitor.config import Config
from monitor.metrics import Metrics, MetricsServer
from monitor.pipeline import output_topics
from monitor.runner import BatchSource, FindingsHandler, Runner, RunStats
from monitor.stage import registered_stages

__all__ = ["Service"]

log = logging.getLogger("driftwarden.service")


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
            ensure_topics(dict(config.kafka), output_topics(config))
        if findings_handler is None:
            findings_handler = build_findings_handler(config, self.metrics)
        self.runner = Runner(
            config,
            metrics=self.metrics,
            source=source,
            sink=sink,
            stages=registered_stages,
            findings_handler=findings_handler,
        )
        self.server: MetricsServer | None = None
        if config.metrics.enabled:
            self.server = MetricsServer(
                self.metrics, config.metrics.host, config.metrics.port, ready=self.runner.ready
            )

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
