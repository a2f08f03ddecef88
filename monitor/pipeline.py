"""One stream's processing of a consumed batch: decode, check, dead-letter, measure, detect.

``StreamPipeline.process`` is synchronous and does no Kafka I/O: it returns the
outgoing messages (dead letters), the findings and the offsets the batch covers;
the runner sends, flushes and only then commits. Metrics are updated once per
batch with pre-bound children.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from connectors.base import OutMessage
from connectors.kafka import RawBatch
from detectors.base import Finding
from monitor.config import Config, StreamSpec
from monitor.decode import REASONS, Batch, StreamDecoder
from monitor.metrics import Metrics

__all__ = [
    "BatchInput",
    "BatchResult",
    "FindingStage",
    "StreamPipeline",
    "account_batch",
    "build_pipelines",
    "dead_letter",
    "output_topics",
    "record_findings",
]


BatchInput = RawBatch


class FindingStage(Protocol):
    """Something that turns accepted batches into findings (drift, entities, models).

    State is kept per partition so it can be checkpointed with the offsets it covers.
    """

    def update(self, batch: Batch, partitions: npt.NDArray[np.int32]) -> list[Finding]: ...

    def partition_state(self, partition: int) -> dict[str, Any] | None: ...

    def restore_partition(self, partition: int, state: dict[str, Any]) -> None: ...

    def drop_partition(self, partition: int) -> None: ...

    def set_remote(self, states: dict[int, dict[str, Any]]) -> None: ...

    aggregating: bool


@dataclass
class BatchResult:
    """What processing one batch produced."""

    stream: str
    events: int
    accepted: int
    rejected: dict[str, int]
    out: list[OutMessage] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)


def dead_letter(
    topic: str, stream: str, raw: BatchInput, index: int, reason: str, detail: str
) -> OutMessage:
    """A dead-letter record: the original bytes and key, the reason in headers."""
    msg = raw.messages[index]
    value = raw.values[index]
    key = msg.key()
    _, ts = msg.timestamp()
    headers = (
        ("driftwarden.reason", reason.encode()),
        ("driftwarden.detail", detail.encode("utf-8", "replace")[:1000]),
        ("driftwarden.stream", stream.encode()),
        ("driftwarden.topic", raw.topic.encode()),
        ("driftwarden.partition", str(int(raw.partitions[index])).encode()),
        ("driftwarden.offset", str(int(raw.offsets[index])).encode()),
        ("driftwarden.timestamp", str(ts).encode()),
    )
    return OutMessage(
        topic=topic, value=value if value is not None else b"", key=key, headers=headers
    )


def _next_offsets(
    topic: str, partitions: npt.NDArray[np.int32], offsets: npt.NDArray[np.int64]
) -> dict[tuple[str, int], int]:
    if len(partitions) == 0:
        return {}
    first = partitions[0]
    if (partitions == first).all():
        return {(topic, int(first)): int(offsets.max()) + 1}
    out = {}
    for p in np.unique(partitions).tolist():
        out[(topic, int(p))] = int(offsets[partitions == p].max()) + 1
    return out


class StreamPipeline:
    """Decode + schema checks + dead letters + metrics (+ finding stages) for one stream."""

    def __init__(
        self,
        spec: StreamSpec,
        metrics: Metrics,
        dead_letter_topic: str,
        stages: Sequence[FindingStage] = (),
    ) -> None:
        self.spec = spec
        self.metrics = metrics
        self.dead_letter_topic = dead_letter_topic
        self.decoder = StreamDecoder(spec)
        self.stages = list(stages)
        name = spec.name
        self._invalid = {r: metrics.invalid_events.labels(name, r) for r in REASONS}
        self._events = {t: metrics.events.labels(name, t) for t in spec.all_topics}
        self._nulls = {f: metrics.field_nulls.labels(name, f) for f in spec.fields}
        self._null_ratio = {f: metrics.null_ratio.labels(name, f) for f in spec.fields}
        self._last = metrics.last_processed.labels(name)
        self._last_event_time = metrics.last_event_time.labels(name)
        self._entities = metrics.entities.labels(name)
        self._entity_overflow = metrics.entity_overflow.labels(name)
        for child in self._invalid.values():  # so rate() sees a zero before the first reject
            child.inc(0)
        self.totals = {"events": 0, "accepted": 0, "rejected": 0}
        # Stages key their state by slot = topic index << 20 | partition (= the partition
        # for a one-topic stream), so the partitions of a stream's topics stay apart.
        self._slot_base = {t: np.int32(i << 20) for i, t in enumerate(spec.all_topics)}
        # Per (topic, partition): events seen, checkpointed with the partition's state.
        self.partition_events: dict[tuple[str, int], int] = {}

    def process(self, raw: BatchInput) -> BatchResult:
        t0 = time.perf_counter()
        batch = self.decoder.decode(raw.values)
        t1 = time.perf_counter()
        out = [
            dead_letter(self.dead_letter_topic, self.spec.name, raw, r.index, r.reason, r.detail)
            for r in batch.rejects
        ]
        counts = batch.reason_counts()
        for reason, count in counts.items():
            self._invalid[reason].inc(count)
        n = len(raw.values)
        self._events[raw.topic].inc(n)
        if batch.n:
            for name, ok in batch.valid.items():
                nulls = batch.n - int(np.count_nonzero(ok))
                if nulls:
                    self._nulls[name].inc(nulls)
                self._null_ratio[name].set(nulls / batch.n)
        if batch.event_time is not None and batch.n:
            self._last_event_time.set(float(batch.event_time.max()))
        if self.decoder.entities is not None:
            self._entities.set(len(self.decoder.entities.codes) - 1)
            if batch.entity_overflow:
                self._entity_overflow.inc(int(np.count_nonzero(batch.entity == -1)))
        t2 = time.perf_counter()
        findings: list[Finding] = []
        if self.stages and batch.n:
            partitions = raw.partitions[batch.rows] + self._slot_base[raw.topic]
            offsets = raw.offsets[batch.rows]
            for stage in self.stages:
                located = getattr(stage, "update_located", None)  # stages that take offsets
                if located is not None:
                    findings.extend(located(batch, partitions, offsets))
                else:
                    findings.extend(stage.update(batch, partitions))
        t3 = time.perf_counter()
        self._last.set(time.time())
        rejected = sum(counts.values())
        self._count_partitions(raw)
        self.totals["events"] += n
        self.totals["accepted"] += batch.n
        self.totals["rejected"] += rejected
        return BatchResult(
            stream=self.spec.name,
            events=n,
            accepted=batch.n,
            rejected=counts,
            out=out,
            findings=findings,
            next_offsets=_next_offsets(raw.topic, raw.partitions, raw.offsets),
            stage_seconds={"decode": t1 - t0, "checks": t2 - t1, "detectors": t3 - t2},
        )

    def _count_partitions(self, raw: BatchInput) -> None:
        parts = raw.partitions
        if len(parts) and (parts == parts[0]).all():
            key = (raw.topic, int(parts[0]))
            self.partition_events[key] = self.partition_events.get(key, 0) + len(parts)
            return
        values, counts = np.unique(parts, return_counts=True)
        for p, c in zip(values.tolist(), counts.tolist(), strict=True):
            key = (raw.topic, int(p))
            self.partition_events[key] = self.partition_events.get(key, 0) + int(c)

    # -- state ---------------------------------------------------------------------
    def partition_state(self, topic: str, partition: int) -> dict[str, Any]:
        """Everything that continues ``(topic, partition)`` exactly."""
        return {
            "events": self.partition_events.get((topic, partition), 0),
            "stages": [s.partition_state(self._slot(topic, partition)) for s in self.stages],
        }

    def restore_partition(self, topic: str, partition: int, state: dict[str, Any]) -> None:
        self.partition_events[(topic, partition)] = int(state.get("events", 0))
        for stage, st in zip(self.stages, state.get("stages", []), strict=False):
            if st is not None:
                stage.restore_partition(self._slot(topic, partition), st)

    def drop_partition(self, topic: str, partition: int) -> None:
        self.partition_events.pop((topic, partition), None)
        for stage in self.stages:
            stage.drop_partition(self._slot(topic, partition))

    def set_partition_count(self, count: int) -> None:
        """The stream's partition count over all its topics (stages that size their
        windows by it take it)."""
        for stage in self.stages:
            setter = getattr(stage, "set_partition_count", None)
            if setter is not None:
                setter(count)

    def set_ownership(self, owned: set[tuple[str, int]]) -> None:
        """This process judges the stream when it owns the stream's first partition."""
        first = (self.spec.all_topics[0], 0)
        for stage in self.stages:
            stage.aggregating = first in owned

    def set_remote(self, states: dict[tuple[str, int], dict[str, Any]]) -> None:
        """Checkpointed pipeline states of partitions other processes own."""
        for index, stage in enumerate(self.stages):
            stage.set_remote(
                {
                    self._slot(t, p): st["stages"][index]
                    for (t, p), st in states.items()
                    if t in self._slot_base and len(st.get("stages", [])) > index
                }
            )

    def _slot(self, topic: str, partition: int) -> int:
        return int(self._slot_base[topic]) + partition


def build_pipelines(
    config: Config,
    metrics: Metrics,
    stages: Callable[[StreamPipeline], list[FindingStage]] | None,
) -> dict[str, StreamPipeline]:
    """One pipeline per configured stream, keyed by each of its topics."""
    pipelines: dict[str, StreamPipeline] = {}
    for spec in config.streams:
        pipeline = StreamPipeline(spec, metrics, config.dead_letter_topic)
        if stages is not None:
            pipeline.stages.extend(stages(pipeline))
        for topic in spec.all_topics:
            pipelines[topic] = pipeline
    return pipelines


def output_topics(config: Config) -> list[str]:
    """The topics the service produces to: dead letters, alerts, retrain requests."""
    topics = [config.dead_letter_topic]
    alerts = config.alerts
    if alerts is not None:
        topics += [t for t in (alerts.topic, alerts.retrain_topic) if t]
    return list(dict.fromkeys(topics))


def record_findings(metrics: Metrics, findings: Sequence[Finding]) -> None:
    """The drift gauges and ADWIN's change counter, from a batch's findings."""
    m = metrics
    for f in findings:
        labels = (f.stream, f.subject, f.detector)
        m.drift_statistic.labels(*labels).set(f.statistic)
        m.drift_threshold.labels(*labels).set(f.threshold)
        if f.p_value is not None:
            m.drift_p_value.labels(*labels).set(f.p_value)
        m.drift_detected.labels(*labels).set(1 if f.drift else 0)
        if f.detector == "adwin" and f.drift:
            m.adwin_changes.labels(f.stream, f.subject).inc(dict(f.details).get("changes", 1.0))


def account_batch(metrics: Metrics, result: BatchResult) -> None:
    """Stage times and dead-letter counts of one processed batch."""
    for stage, secs in result.stage_seconds.items():
        metrics.stage_seconds.labels(stage).inc(secs)
    dead = sum(result.rejected.values())
    if dead:
        metrics.dead_letters.labels(result.stream).inc(dead)
