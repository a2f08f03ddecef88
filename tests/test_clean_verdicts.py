"""Clean verdicts handed over as rows (``Verdicts``) change nothing a user sees.

The service's batch transaction asks the drift stage for its clean verdicts as
``Verdicts`` (``StreamPipeline.compact_clean``) instead of one ``Finding`` each. These
tests run the same stream both ways and compare everything the verdicts feed: the
stage's findings one by one, the drift gauges, the status board, the run's counts
and every alert, a resolution built from a clean verdict included.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from connectors.base import OutMessage
from connectors.kafka import RawBatch
from detectors.base import Finding, Verdicts
from monitor.alerting.engine import Alert, AlertEngine
from monitor.config.alerts import AlertsConfig
from monitor.config.schema import parse_config
from monitor.metrics import Metrics
from monitor.pipeline.drift import DriftStage
from monitor.pipeline.stream import build_pipelines
from monitor.runtime import transaction as tx
from monitor.status import StatusBoard

FIELDS = ("x0", "x1", "x2", "x3")


def _config() -> Any:
    fields: dict[str, Any] = {f: {"type": "float", "nullable": True} for f in FIELDS}
    fields["state"] = {"type": "category", "categories": ["a", "b", "c"]}
    return parse_config(
        {
            "kafka": {"bootstrap.servers": "127.0.0.1:9"},
            "metrics": {"enabled": False},
            "dead_letter_topic": "dlq",
            "streams": [
                {
                    "name": "s",
                    "topic": "t",
                    "fields": fields,
                    "baseline": {"first_events": 4_000},
                    "window": {"events": 2_000, "step": 500},
                }
            ],
        },
        env={},
    )


def _events(n: int, seed: int = 7) -> list[bytes]:
    """Stationary, then x0 and x1 shift and x2 gains nulls, then all is back."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        shifted = 9_000 <= i < 13_000
        row: dict[str, Any] = {}
        for k, f in enumerate(FIELDS):
            v = float(rng.normal())
            if shifted and k < 2:
                v += 1.0
            null = rng.random() < (0.3 if shifted and f == "x2" else 0.05)
            row[f] = None if null and f != "x0" else round(v, 4)
        row["state"] = str(rng.choice(["a", "b", "c"], p=[0.6, 0.3, 0.1]))
        out.append(json.dumps(row).encode())
    return out


def _batches(values: list[bytes], partitions: int = 4, size: int = 1_000) -> list[RawBatch]:
    """Batches of ``size`` events, each a run of rows per partition (as fetched)."""
    out = []
    offsets = [0] * partitions
    for a in range(0, len(values), size):
        chunk = values[a : a + size]
        parts = (np.arange(len(chunk)) * partitions // len(chunk)).astype(np.int32)
        offs = np.empty(len(chunk), dtype=np.int64)
        for p in range(partitions):
            at = np.flatnonzero(parts == p)
            offs[at] = offsets[p] + np.arange(at.size)
            offsets[p] += at.size
        out.append(
            RawBatch(
                topic="t",
                values=chunk,
                partitions=parts,
                offsets=offs,
                keys=[None] * len(chunk),
                timestamps=[-1] * len(chunk),
            )
        )
    return out


class _Alerts:
    """A findings handler that keeps the engine's alerts."""

    def __init__(self) -> None:
        self.engine = AlertEngine(AlertsConfig(resolve_after=2, cooldown=0.0))
        self.alerts: list[Alert] = []

    def handle(
        self, findings: list[Finding], now: float, verdicts: Sequence[tuple[int, Verdicts]] = ()
    ) -> list[OutMessage]:
        self.alerts.extend(self.engine.observe(findings, now, verdicts).alerts)
        return []


class _Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def time(self) -> float:
        self.now += 1.0
        return self.now

    def perf_counter(self) -> float:
        return self.now


def _run(compact: bool, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setattr(tx, "time", _Clock())
    config = _config()
    metrics = Metrics(CollectorRegistry())
    pipelines = build_pipelines(config, metrics)
    handler = _Alerts()
    board = StatusBoard()
    stats = tx.RunStats()
    transaction = tx.BatchTransaction(pipelines, metrics, handler, stats, board)  # type: ignore[arg-type]
    (pipeline,) = set(pipelines.values())
    (stage,) = [s for s in pipeline.stages if isinstance(s, DriftStage)]
    stage.set_partition_count(4)
    pipeline.compact_clean = compact
    verdicts = 0
    batches = _batches(_events(20_000))
    for a in range(0, len(batches), 2):  # two batches per transaction: order counts
        prepared = transaction.prepare(batches[a : a + 2])
        verdicts += sum(len(v) for r in prepared.results for v in r.verdicts)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metrics.registry.collect()
        if family.name.startswith("driftwarden_drift")
        for s in family.samples
    }
    series = {
        (stream, key): (s.kind, list(s.points), s.p_value)
        for stream, by_key in board._series.items()
        for key, s in by_key.items()
    }
    return {
        "alerts": handler.alerts,
        "gauges": samples,
        "board": series,
        "findings": stats.findings,
        "drifting": set(stats.drifting),
        "verdicts": verdicts,
    }


def test_the_service_sees_the_same_with_clean_verdicts_as_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    full = _run(False, monkeypatch)
    rows = _run(True, monkeypatch)
    assert full["verdicts"] == 0
    assert rows["verdicts"] > 100  # the rows path was taken
    statuses = Counter((a.status, a.detector) for a in rows["alerts"])
    assert statuses[("firing", "ks")] and statuses[("resolved", "ks")], statuses
    assert statuses[("firing", "data_quality")], statuses
    for key in ("alerts", "gauges", "board", "findings", "drifting"):
        assert rows[key] == full[key], key


def test_a_rows_finding_is_the_finding_the_stage_reports_without_rows() -> None:
    config = _config()
    spec = config.streams[0]
    pipelines = [build_pipelines(config, Metrics(CollectorRegistry()))["t"] for _ in range(2)]
    stages = [next(s for s in p.stages if isinstance(s, DriftStage)) for p in pipelines]
    for stage in stages:
        stage.set_partition_count(4)
    pipelines[1].compact_clean = True
    assert stages[1].compact_clean and not stages[0].compact_clean
    built = 0
    for raw in _batches(_events(16_000), size=2_500):
        plain, rows = (p.process(raw) for p in pipelines)
        assert not plain.verdicts
        # Findings that are not clean rows come in the same order; the rows' own
        # findings are the clean findings the plain stage reported.
        as_rows = [f for v in rows.verdicts for f in v.findings()]
        built += len(as_rows)
        assert [f for f in plain.findings if f not in as_rows] == rows.findings
        assert Counter(plain.findings) == Counter(rows.findings + as_rows)
        assert rows.every_finding() == rows.findings + as_rows
        for v in rows.verdicts:
            assert v.stream == spec.name
            assert len(v) == len(v.statistic) == len(v.threshold) == len(v.p_value)
            for i, f in enumerate(v.findings()):
                assert not f.drift and f.window.events > 0 and f.partitions
                assert (f.subject, f.detector, f.statistic, f.threshold, f.p_value) == (
                    v.subjects[i],
                    v.detectors[i],
                    v.statistic[i],
                    v.threshold[i],
                    v.p_value[i],
                )
    assert built > 40
