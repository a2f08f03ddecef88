"""Assignment and restore: what this process owns and where it continues from.

On assignment each received partition is restored from its checkpoint and the
consumer seeks to the checkpointed offset (starting without the checkpoints would
not be exact, so reading them is retried until it works). Streams whose judge
partition (their first) arrives here continue their alert episodes and webhook
queue from the stream's alert checkpoint. On revocation the partitions are
checkpointed before they are let go; a stream no longer judged here is released.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from connectors.kafka import (
    KafkaSink,
    KafkaSource,
    TopicPartitionKey,
    consumer_limits,
    producer_limits,
)
from monitor.checkpoints import CheckpointKey
from monitor.config.schema import Config
from monitor.errors import DriftwardenError
from monitor.metrics import Metrics
from monitor.pipeline.stream import StreamPipeline, unique_pipelines
from monitor.runtime.checkpointer import Checkpointer, judged_streams
from monitor.runtime.transaction import BatchSource, FindingsHandler

__all__ = ["Assignment", "kafka_sink", "kafka_source"]

log = logging.getLogger("driftwarden.runner")


class Assignment:
    """The rebalance callbacks of a runner (``on_assign`` / ``on_revoke``)."""

    def __init__(
        self,
        config: Config,
        pipelines: Mapping[str, StreamPipeline],
        checkpointer: Checkpointer,
        source: Callable[[], BatchSource],
        findings_handler: FindingsHandler | None,
        metrics: Metrics,
        stop_event: threading.Event,
        retry_every: float = 1.0,
    ) -> None:
        self.config = config
        self.pipelines = pipelines
        self.checkpointer = checkpointer
        self._source = source
        self.findings_handler = findings_handler
        self.metrics = metrics
        self.stop_event = stop_event
        self.retry_every = retry_every
        self.judging: set[str] = set()  # streams whose alert state this process continues
        # Called first in each callback: the runner finishes a batch still in flight.
        self.settle: Callable[[], None] = _nothing

    def on_assign(self, partitions: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Restore each received partition from its checkpoint; return where to start."""
        self.settle()
        log.info("assigned partitions=%s", sorted(partitions))
        source = self._source()
        self.metrics.assigned_partitions.set(len(source.assignment))
        store = self.checkpointer.store
        starts: dict[TopicPartitionKey, int] = {}
        if store is None:
            return starts
        while True:  # starting without the checkpoints would not be exact: wait for them
            try:
                store.refresh()
                break
            except DriftwardenError as exc:
                if self.stop_event.is_set():
                    raise
                log.warning("cannot read checkpoints yet, retrying: %s", exc)
                time.sleep(self.retry_every)
        group = self.config.group
        for pipeline in unique_pipelines(self.pipelines):
            baseline = store.baseline(CheckpointKey.for_baseline(group, pipeline.spec.name))
            if baseline is not None:
                for stage in pipeline.stages:
                    stage.restore_baseline(baseline)
                pipeline.refresh_ready()
                self.checkpointer.baselines_saved.add(pipeline.spec.name)
        owned = set(source.assignment) | set(partitions)
        self._continue_alerts(owned)
        for pipeline in unique_pipelines(self.pipelines):
            pipeline.set_ownership(owned)
            # Windows count events of the stream: stages size them by the partition
            # count of the stream's own events (a model's label topic does not count).
            count = sum(source.partition_count(t) for t in pipeline.spec.inference_topics)
            pipeline.set_partition_count(count)
        for topic, partition in partitions:
            pipeline = self.pipelines[topic]
            pipeline.drop_partition(topic, partition)
            key = self.checkpointer.key(topic, partition)
            saved = store.partition(key, pipeline.state_decoders)
            if saved is None:
                continue
            pipeline.restore_partition(topic, partition, saved.state)
            starts[(topic, partition)] = saved.offset
            self.checkpointer.positions[(topic, partition)] = saved.offset
            self.checkpointer.checkpointed_at[(topic, partition)] = self.checkpointer.clock()
            log.info(
                "partition %s/%d restored from its checkpoint at offset %d",
                topic,
                partition,
                saved.offset,
            )
        return starts

    def _continue_alerts(self, owned: set[TopicPartitionKey]) -> None:
        """Take over the alert state of streams newly judged here."""
        store = self.checkpointer.store
        judged = {p.spec.name for p in judged_streams(self.pipelines, owned)}
        if self.findings_handler is None or store is None:
            self.judging = judged
            return
        for name in sorted(judged - self.judging):
            kept = store.stream(CheckpointKey.for_alerts(self.config.group, name))
            alerts = kept.alerts if kept is not None else store.legacy_alerts(self.config.group)
            if alerts is not None:
                self.findings_handler.restore(name, alerts)
                log.info("stream %s: alert episodes continued from the checkpoint", name)
        self.judging = judged

    def on_revoke(self, partitions: list[TopicPartitionKey]) -> None:
        """Checkpoint what is being taken away before letting go of it."""
        self.settle()
        log.info("revoked partitions=%s", sorted(partitions))
        checkpointer = self.checkpointer
        try:
            checkpointer.checkpoint([p for p in partitions if p in checkpointer.positions])
        except DriftwardenError as exc:  # the next owner replays from the last checkpoint
            log.error("checkpoint on revocation failed: %s", exc)
        for key in partitions:
            checkpointer.forget(key)
            self.pipelines[key[0]].drop_partition(*key)
            self.metrics.consumer_lag.remove(key[0], str(key[1]))
        remaining = set(self._source().assignment) - set(partitions)
        for pipeline in unique_pipelines(self.pipelines):
            pipeline.set_ownership(remaining)  # a stream judged elsewhere now: no verdicts here
        judged = {p.spec.name for p in judged_streams(self.pipelines, remaining)}
        if self.findings_handler is not None:
            for name in sorted(self.judging - judged):
                self.findings_handler.release(name)
        self.judging = judged


def _nothing() -> None:
    pass


def kafka_source(
    config: Config, assignment: Assignment, on_error: Callable[[str, bool], None]
) -> KafkaSource:
    """The consumer of ``config``'s topics, with ``assignment``'s rebalance callbacks."""
    c = config
    fetch = c.source.fetch_path(c.kafka)
    options: dict[str, Any] = {
        **consumer_limits(fetch),
        "fetch.queue.backoff.ms": c.source.fetch_queue_backoff_ms,
        "queued.min.messages": c.source.queued_min_messages,
        # Incremental rebalances: a joining replica takes partitions without the
        # others stopping (set partition.assignment.strategy to override).
        "partition.assignment.strategy": "cooperative-sticky",
        **c.kafka,
    }
    log.info("records are fetched by %s (source.fetch %s)", fetch, c.source.fetch)
    return KafkaSource(
        options,
        c.group,
        [t for s in c.streams for t in s.all_topics],
        max_batch_events=c.source.max_batch_events,
        max_wait=c.source.max_wait,
        on_assign=assignment.on_assign,
        on_revoke=assignment.on_revoke,
        on_error=on_error,
        fetch=fetch,
    )


def kafka_sink(config: Config, metrics: Metrics) -> KafkaSink:
    """The producer of dead letters, alerts and retrain requests. A refused record is
    sent again until the broker takes it: the commit waits (nothing is skipped),
    readiness drops, and the failure is counted."""

    def failed(topic: str, reason: str) -> None:
        metrics.produce_failures.labels(topic, reason.lstrip("_").lower()).inc()

    options = {**producer_limits(config.dead_letter_max_bytes), **config.kafka}
    return KafkaSink(options, retry_failed=True, on_failure=failed)
