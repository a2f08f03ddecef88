"""The assembled service: runner, metrics endpoint and status page (the stages each
stream runs come from the registry, ``monitor.pipeline.stage.STAGES``)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from connectors.base import MessageSink
from connectors.kafka import ensure_topics, wait_for_cluster
from monitor.alerting.dispatch import AlertingHandler, build_findings_handler
from monitor.config.schema import Config
from monitor.metrics import Metrics, MetricsServer
from monitor.pipeline.fleet import FleetStage, FleetStatus
from monitor.pipeline.stream import output_topics, unique_pipelines
from monitor.runtime.runner import BatchSource, FindingsHandler, Runner, RunStats
from monitor.status import (
    StatusBoard,
    StatusSection,
    StatusSource,
    render_html,
    render_json,
)

__all__ = ["Service"]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


log = logging.getLogger("driftwarden.service")

_HTML = "text/html; charset=utf-8"
_JSON = "application/json"


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
        self.board = StatusBoard()
        self.server: MetricsServer | None = None
        if config.metrics.enabled:
            # Bind first: a port in use is a one-line error before any client exists.
            token = config.metrics.token
            self.server = MetricsServer(
                self.metrics,
                config.metrics.host,
                config.metrics.port,
                ready=self._ready,
                pages={
                    "/status": lambda: (render_html(self.board.snapshot()), _HTML),
                    "/status.json": lambda: (render_json(self.board.snapshot()), _JSON),
                },
                token=token.get_secret_value() if token is not None else None,
                setting="metrics.listen (or DRIFTWARDEN_METRICS_LISTEN)",
            )
            if token is None and not _is_loopback(config.metrics.host):
                log.warning(
                    "metrics.listen %s is reachable from the network and /status has no "
                    "bearer token: set metrics.token (DRIFTWARDEN_HTTP_TOKEN)",
                    config.metrics.listen,
                )
        try:
            if source is None:
                wait_for_cluster(dict(config.kafka), config.source.connect_timeout)
                ensure_topics(dict(config.kafka), output_topics(config))
            if findings_handler is None:
                findings_handler = build_findings_handler(config, self.metrics)
            if isinstance(findings_handler, AlertingHandler):
                findings_handler.board = self.board
            self.runner = Runner(
                config,
                metrics=self.metrics,
                source=source,
                sink=sink,
                findings_handler=findings_handler,
                board=self.board,
            )
        except BaseException:
            if self.server is not None:
                self.server.stop()
            raise
        fleet = [
            stage
            for pipeline in unique_pipelines(self.runner.pipelines)
            for stage in pipeline.stages
            if isinstance(stage, FleetStage)
        ]
        if fleet and config.metrics.enabled:
            for stage in fleet:
                stage.publish_status = True
            self.board.add_section(self._fleet_sections)
            self.board.add_detail("fleet", self.fleet_status)
        for pipeline in unique_pipelines(self.runner.pipelines):
            for each in pipeline.stages:  # stages' own tables on /status (models)
                if isinstance(each, StatusSource):
                    self.board.add_section(each.status_sections)

    def _ready(self) -> bool:
        return self.runner.ready()

    def _fleet_sections(self) -> list[StatusSection]:
        return [_fleet_section(status) for status in self._fleet_statuses()]

    def _fleet_statuses(self) -> list[FleetStatus]:
        return [
            stage.last_status
            for pipeline in unique_pipelines(self.runner.pipelines)
            for stage in pipeline.stages
            if isinstance(stage, FleetStage) and stage.last_status is not None
        ]

    def fleet_status(self) -> dict[str, Any]:
        """The worst devices per condition of every stream with a fleet section."""
        return {"streams": {s.stream: s.to_dict() for s in self._fleet_statuses()}}

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


def _fleet_section(status: FleetStatus) -> StatusSection:
    """The worst devices of one stream, as a table of the status page."""
    rows = []
    for condition, devices in status.worst:
        for d in devices:
            values = ", ".join(f"{k}={v:.4g}" for k, v in d.values)
            rows.append(
                (
                    condition,
                    d.entity,
                    str(d.partition),
                    f"{d.score:.4g}",
                    f"{d.threshold:.4g}",
                    f"{d.run_length:,}",
                    f"{d.z:.3g}",
                    values,
                )
            )
    unhealthy = ", ".join(f"{c}: {n:,}" for c, n in status.unhealthy if n) or "none"
    return StatusSection(
        title=f"Devices of stream {status.stream}",
        columns=("condition", "device", "partition", "score", "threshold", "run", "z", "values"),
        rows=tuple(rows),
        note=(
            f"{status.tracked:,} tracked, {status.healthy:,} healthy; unhealthy by condition: "
            f"{unhealthy}; evicted {status.evicted:,}, rejected {status.rejected:,}, "
            f"late {status.late:,}"
        ),
    )
