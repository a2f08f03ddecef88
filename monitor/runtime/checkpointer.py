"""The checkpoint scheduler: when and what this process writes to the state store.

After a batch's outgoing messages are durable, ``advance`` moves each partition's
position; ``maybe_checkpoint`` then writes the state of each partition that has
read ``state.every_events`` events (offsets) since its last checkpoint, and every
``state.every_seconds`` seconds every owned partition's, each with its position;
with them a baseline built from first events (once) and the alert state of every
stream this process judges. One ownership rule: whoever judges a stream (owns its first
partition) checkpoints that stream's alert episodes and webhook queue.

After a checkpoint, streams judged here receive the latest checkpointed windows of
partitions other replicas own (``share_windows``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping

from connectors.kafka import TopicPartitionKey
from monitor.checkpoints import CheckpointKey, PartitionCheckpoint, PartitionState, StreamCheckpoint
from monitor.config.schema import Config
from monitor.errors import DriftwardenError, SinkError
from monitor.metrics import Metrics
from monitor.pipeline.stream import StreamPipeline, unique_pipelines
from monitor.runtime.readiness import Readiness
from monitor.runtime.state import StateStore
from monitor.runtime.transaction import BatchSource, FindingsHandler

__all__ = ["Checkpointer", "judged_streams"]

log = logging.getLogger("driftwarden.runner")


def judged_streams(
    pipelines: Mapping[str, StreamPipeline], owned: Iterable[TopicPartitionKey]
) -> list[StreamPipeline]:
    """The streams whose judge partition is in ``owned``."""
    owned = set(owned)
    return [p for p in unique_pipelines(pipelines) if p.judges(owned)]


class Checkpointer:
    """Positions of owned partitions and the checkpoints that make them durable."""

    def __init__(
        self,
        config: Config,
        pipelines: Mapping[str, StreamPipeline],
        store: StateStore | None,
        source: Callable[[], BatchSource],
        findings_handler: FindingsHandler | None,
        metrics: Metrics,
        readiness: Readiness,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.pipelines = pipelines
        self.store = store
        self._source = source
        self.findings_handler = findings_handler
        self.metrics = metrics
        self.readiness = readiness
        self.clock = clock
        self.positions: dict[TopicPartitionKey, int] = {}
        self.checkpointed_at: dict[TopicPartitionKey, float] = {}
        # Per partition, the events (offsets) read since its last checkpoint.
        self.since: dict[TopicPartitionKey, int] = {}
        self.last = clock()
        self.baselines_saved: set[str] = set()
        self.written = 0  # checkpoint rounds confirmed, for tests and the log
        self.saved: dict[TopicPartitionKey, int] = {}  # checkpoints per partition

    @property
    def events_since(self) -> int:
        """Events read since their partitions' last checkpoints."""
        return sum(self.since.values())

    @property
    def source(self) -> BatchSource:
        return self._source()

    def key(self, topic: str, partition: int) -> CheckpointKey:
        name = self.pipelines[topic].spec.name
        return CheckpointKey.for_partition(self.config.group, name, topic, partition)

    # -- after each batch ----------------------------------------------------------
    def advance(self, offsets: Mapping[TopicPartitionKey, int], events: int) -> None:
        """The batch's outputs are durable: its partitions continue after ``offsets``."""
        if self.store is None:
            self.source.commit(offsets)
        for key, offset in offsets.items():
            before = self.positions.get(key)
            # (its first batch here: a share of the batch's events)
            read = events // max(len(offsets), 1) if before is None else max(offset - before, 0)
            self.since[key] = self.since.get(key, 0) + read
        self.positions.update(offsets)

    def maybe_checkpoint(self) -> None:
        if self.store is None:
            return
        cfg = self.config.state
        now = self.clock()
        due: list[TopicPartitionKey] | None = None  # None: every owned partition
        if now - self.last < cfg.every_seconds:
            due = [k for k, n in self.since.items() if n >= cfg.every_events]
        if due is None or due:
            try:
                self.checkpoint(due)
                self.share_windows()
            except DriftwardenError as exc:
                # Queued checkpoint records are still delivered when the broker returns;
                # until one is acknowledged, a restart replays from the previous one.
                log.warning("checkpoint not confirmed yet, will retry: %s", exc)
                self.last = now
        for (topic, partition), at in self.checkpointed_at.items():
            name = self.pipelines[topic].spec.name
            self.metrics.checkpoint_age.labels(name, str(partition)).set(now - at)

    # -- writing -------------------------------------------------------------------
    def checkpoint(self, partitions: list[TopicPartitionKey] | None = None) -> int:
        """Write the state of ``partitions`` (default: all processed) with their offsets.

        Called after a batch's outputs are durable: the state then covers exactly
        the events before each partition's position. Returns how many were written.
        """
        store = self.store
        if store is None:
            return 0
        keys = list(self.positions) if partitions is None else partitions
        group = self.config.group
        now = self.clock()
        for topic, partition in keys:
            state = self.pipelines[topic].partition_state(topic, partition)
            checkpoint = PartitionCheckpoint(self.positions[(topic, partition)], state)
            store.put_partition(self.key(topic, partition), checkpoint)
        for pipeline in unique_pipelines(self.pipelines):
            name = pipeline.spec.name
            if name in self.baselines_saved:
                continue
            for stage in pipeline.stages:
                baseline = stage.baseline_checkpoint()
                if baseline is not None:
                    store.put_baseline(CheckpointKey.for_baseline(group, name), baseline)
                    self.baselines_saved.add(name)
        if self.findings_handler is not None:
            for pipeline in judged_streams(self.pipelines, self.source.assignment):
                name = pipeline.spec.name
                alerts = StreamCheckpoint(self.findings_handler.state(name))
                store.put_stream(CheckpointKey.for_alerts(group, name), alerts)
        with self.readiness.waiting():
            store.flush()
        offsets = {k: self.positions[k] for k in keys}
        if offsets:
            try:
                self.source.commit(offsets)  # for tooling; the checkpoint is the truth
            except SinkError as exc:
                log.warning("group offsets not committed (the checkpoint holds them): %s", exc)
        for key in keys:
            self.checkpointed_at[key] = now
            self.since.pop(key, None)
            self.saved[key] = self.saved.get(key, 0) + 1
        if partitions is None:
            self.last = now
        self.written += 1
        return len(keys)

    def share_windows(self) -> None:
        """Give each stream judged here the latest windows of partitions others own."""
        store = self.store
        if store is None:
            return
        source = self.source
        owned = set(source.assignment)
        refreshed = False
        for pipeline in unique_pipelines(self.pipelines):
            pipeline.set_ownership(owned)
            if not any(s.judge for s in pipeline.stages):
                continue
            topics = pipeline.spec.all_topics
            if all((t, p) in owned for t in topics for p in range(source.partition_count(t))):
                continue  # this process owns the whole stream: nothing to share
            if not refreshed:
                store.refresh()
                refreshed = True
            remote: dict[TopicPartitionKey, PartitionState] = {}
            for key in store.partition_keys(self.config.group, pipeline.spec.name):
                if key.topic_partition in owned or key.topic not in topics:
                    continue
                saved = store.partition(key, pipeline.state_decoders)
                if saved is not None:
                    remote[key.topic_partition] = saved.state
            pipeline.set_remote(remote)

    def forget(self, key: TopicPartitionKey) -> None:
        """A revoked partition: no position, no age gauge."""
        self.positions.pop(key, None)
        self.checkpointed_at.pop(key, None)
        self.since.pop(key, None)
        self.metrics.checkpoint_age.remove(self.pipelines[key[0]].spec.name, str(key[1]))
