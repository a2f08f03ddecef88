"""The service loop: consume a batch, process it, make its outputs durable, commit.

Order per consumed batch (at-least-once, nothing skipped):

1. every stream's pipeline processes its part (decode, checks, detectors);
2. dead letters and alerts are handed to the producer;
3. the producer is flushed until the broker acknowledged all of them;
4. only then are the batch's offsets committed.

A crash between 3 and 4 replays the batch: dead letters and alerts may then appear
twice, with the same content (alerts carry deterministic ids). A stop request
(SIGTERM/SIGINT) lets the current batch finish all four steps before closing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from connectors.base import MessageSink, OutMessage
from connectors.kafka import (
    KafkaSink,
    KafkaSource,
    RawBatch,
    TopicPartitionKey,
    consumer_limits,
    producer_limits,
)
from detectors.base import Finding
from monitor.config import Config
from monitor.errors import DriftwardenError, SinkError
from monitor.metrics import Metrics
from monitor.pipeline import (
    BatchResult,
    FindingStage,
    StreamPipeline,
    account_batch,
    build_pipelines,
    record_findings,
)
from monitor.state import StateStore, partition_key
from monitor.status import StatusBoard

__all__ = ["FindingsHandler", "RunStats", "Runner"]

log = logging.getLogger("driftwarden.runner")

_BROKER_DOWN = {"_ALL_BROKERS_DOWN", "_TRANSPORT", "_RESOLVE", "_TIMED_OUT"}


class BatchSource(Protocol):
    assignment: set[TopicPartitionKey]

    def poll(self) -> list[RawBatch]: ...

    def commit(self, next_offsets: Mapping[TopicPartitionKey, int]) -> None: ...

    def lag(self, positions: Mapping[TopicPartitionKey, int]) -> dict[TopicPartitionKey, int]: ...

    def probe(self, timeout: float) -> bool: ...

    def partition_count(self, topic: str) -> int: ...

    def close(self) -> None: ...


class FindingsHandler(Protocol):
    """Consumes findings after each batch (the alert engine); returns messages to send."""

    def handle(self, findings: list[Finding], now: float) -> list[OutMessage]: ...

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


@dataclass
class RunStats:
    """Counts since start, for the console summary and tests."""

    events: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    # Accepted events with excluded values (dead-lettered too), by first reason.
    violated: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    commits: int = 0
    messages_out: int = 0
    findings: int = 0
    drifting: set[tuple[str, str, str]] = field(default_factory=set)

    @property
    def invalid(self) -> int:
        return sum(self.rejected.values())

    def add(self, result: BatchResult) -> None:
        """Count one stream's part of a processed batch."""
        self.events += result.events
        self.accepted += result.accepted
        for reason, count in result.rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + count
        for reason, count in result.violations.items():
            self.violated[reason] = self.violated.get(reason, 0) + count
        self.findings += len(result.findings)


class Runner:
    """Wires source, pipelines, sink and metrics together and runs the loop."""

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics | None = None,
        source: BatchSource | None = None,
        sink: MessageSink | None = None,
        stages: Callable[[StreamPipeline], list[FindingStage]] | None = None,
        findings_handler: FindingsHandler | None = None,
        state_store: StateStore | None = None,
        board: StatusBoard | None = None,
    ) -> None:
        self.config = config
        self.board = board
        self.metrics = metrics if metrics is not None else Metrics()
        self.pipelines = build_pipelines(config, self.metrics, stages)
        self.findings_handler = findings_handler
        if state_store is None and source is None and config.state.enabled:
            state_store = StateStore(config.kafka, config.state.topic)
        self.state = state_store
        self._checkpointed_at: dict[TopicPartitionKey, float] = {}
        self._events_since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._baselines_saved: set[str] = set()
        self._alerts_restored = False
        # False skips the checkpoint on close, as a crash would (for tests).
        self.final_checkpoint = True
        self.probe_interval = 2.0
        self._waiting_since: float | None = None  # since when a flush waits for the broker
        self._last_probe = time.monotonic()
        self._broker_ok = True
        self._last_broker_error = 0.0
        self.source: BatchSource = source if source is not None else self._make_source()
        self.sink: MessageSink = sink if sink is not None else self._make_sink()
        self.positions: dict[TopicPartitionKey, int] = {}
        self.stats = RunStats()
        self.stop_event = threading.Event()
        self._ready_gauge = self.metrics.ready
        self._ready_gauge.set(0)

    def _make_sink(self) -> KafkaSink:
        # A refused dead letter or alert is sent again until the broker takes it: the
        # commit waits (nothing is skipped), readiness drops, the failure is counted.
        def failed(topic: str, reason: str) -> None:
            self.metrics.produce_failures.labels(topic, reason.lstrip("_").lower()).inc()

        options = {**producer_limits(self.config.dead_letter_max_bytes), **self.config.kafka}
        return KafkaSink(options, retry_failed=True, on_failure=failed)

    def _make_source(self) -> KafkaSource:
        c = self.config
        options: dict[str, Any] = {
            **consumer_limits(),
            "fetch.queue.backoff.ms": c.source.fetch_queue_backoff_ms,
            "queued.min.messages": c.source.queued_min_messages,
            # Incremental rebalances: a joining replica takes partitions without the
            # others stopping (set partition.assignment.strategy to override).
            "partition.assignment.strategy": "cooperative-sticky",
            **c.kafka,
        }
        topics = [t for s in c.streams for t in s.all_topics]
        return KafkaSource(
            options,
            c.group,
            topics,
            max_batch_events=c.source.max_batch_events,
            max_wait=c.source.max_wait,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_error=self._on_kafka_error,
        )

    # -- callbacks -------------------------------------------------------------------
    def _on_assign(self, partitions: list[TopicPartitionKey]) -> dict[TopicPartitionKey, int]:
        """Restore each received partition from its checkpoint; return where to start."""
        log.info("assigned partitions=%s", sorted(partitions))
        self.metrics.assigned_partitions.set(len(self.source.assignment))
        starts: dict[TopicPartitionKey, int] = {}
        if self.state is None:
            return starts
        while True:  # starting without the checkpoints would not be exact: wait for them
            try:
                self.state.refresh()
                break
            except DriftwardenError as exc:
                if self.stop_event.is_set():
                    raise
                log.warning("cannot read checkpoints yet, retrying: %s", exc)
                time.sleep(1.0)
        group = self.config.group
        for pipeline in dict.fromkeys(self.pipelines.values()):
            saved = self.state.get(f"{group}/{pipeline.spec.name}/baseline")
            for stage in pipeline.stages:
                if saved is not None and hasattr(stage, "restore_baseline"):
                    stage.restore_baseline(saved["json"])
                    self._baselines_saved.add(pipeline.spec.name)
        leading = self._leads(set(self.source.assignment) | set(partitions))
        if leading and not self._alerts_restored and self.findings_handler is not None:
            # The new leader continues the alert episodes and the webhook queue.
            saved = self.state.get(f"{group}/alerts")
            if saved is not None:
                self.findings_handler.restore(saved)
        self._alerts_restored = leading
        owned = set(self.source.assignment) | set(partitions)
        for pipeline in dict.fromkeys(self.pipelines.values()):
            pipeline.set_ownership(owned)
            # Windows count events of the stream: stages size them by the partition count.
            count = sum(self.source.partition_count(t) for t in pipeline.spec.all_topics)
            pipeline.set_partition_count(count)
        for topic, partition in partitions:
            pipeline = self.pipelines[topic]
            pipeline.drop_partition(topic, partition)
            saved = self.state.get(partition_key(group, pipeline.spec.name, topic, partition))
            if saved is None:
                continue
            pipeline.restore_partition(topic, partition, saved["pipeline"])
            starts[(topic, partition)] = int(saved["offset"])
            self.positions[(topic, partition)] = int(saved["offset"])
            self._checkpointed_at[(topic, partition)] = time.monotonic()
            log.info(
                "partition %s/%d restored from its checkpoint at offset %d",
                topic,
                partition,
                saved["offset"],
            )
        return starts

    def _on_revoke(self, partitions: list[TopicPartitionKey]) -> None:
        """Checkpoint what is being taken away before letting go of it."""
        log.info("revoked partitions=%s", sorted(partitions))
        try:
            self.checkpoint([p for p in partitions if p in self.positions])
        except DriftwardenError as exc:  # the next owner replays from the last checkpoint
            log.error("checkpoint on revocation failed: %s", exc)
        for key in partitions:
            self.positions.pop(key, None)
            self._checkpointed_at.pop(key, None)
            self.pipelines[key[0]].drop_partition(*key)
            self.metrics.consumer_lag.remove(key[0], str(key[1]))
            pipeline = self.pipelines[key[0]]
            self.metrics.checkpoint_age.remove(pipeline.spec.name, str(key[1]))

    def _leads(self, owned: set[TopicPartitionKey]) -> bool:
        """The leader owns the first stream's first partition: it judges, alerts and
        checkpoints the alert state (other replicas' findings reach it through their
        checkpoints)."""
        first = self.config.streams[0].all_topics[0]
        return (first, 0) in owned

    def _share_windows(self) -> None:
        """Give each stream the latest windows of the partitions other replicas own."""
        if self.state is None:
            return
        owned = set(self.source.assignment)
        group = self.config.group
        refreshed = False
        for pipeline in dict.fromkeys(self.pipelines.values()):
            pipeline.set_ownership(owned)
            if not any(getattr(s, "aggregating", False) for s in pipeline.stages):
                continue
            topics = pipeline.spec.all_topics
            if all((t, p) in owned for t in topics for p in range(self.source.partition_count(t))):
                continue  # this process owns the whole stream: nothing to share
            if not refreshed:
                self.state.refresh()
                refreshed = True
            remote: dict[TopicPartitionKey, dict[str, Any]] = {}
            prefix = f"{group}/{pipeline.spec.name}/"
            for key in self.state.keys(prefix):
                topic, _, part = key[len(prefix) :].rpartition("/")
                if not part.isdigit() or (topic, int(part)) in owned:
                    continue
                saved = self.state.get(key)
                if saved is not None and topic in pipeline.spec.all_topics:
                    remote[(topic, int(part))] = saved["pipeline"]
            pipeline.set_remote(remote)

    # -- checkpoints ---------------------------------------------------------------
    def checkpoint(self, partitions: list[TopicPartitionKey] | None = None) -> int:
        """Write the state of ``partitions`` (default: all processed) with their offsets.

        Called after a batch's outputs are durable: the state then covers exactly
        the events before each partition's position. Returns how many were written.
        """
        if self.state is None:
            return 0
        keys = list(self.positions) if partitions is None else partitions
        group = self.config.group
        now = time.monotonic()
        for topic, partition in keys:
            pipeline = self.pipelines[topic]
            state = {
                "offset": self.positions[(topic, partition)],
                "pipeline": pipeline.partition_state(topic, partition),
                "at": time.time(),
            }
            self.state.put(partition_key(group, pipeline.spec.name, topic, partition), state)
        for pipeline in dict.fromkeys(self.pipelines.values()):
            name = pipeline.spec.name
            if name in self._baselines_saved:
                continue
            for stage in pipeline.stages:
                text = stage.baseline_state() if hasattr(stage, "baseline_state") else None
                if text is not None:
                    self.state.put(f"{group}/{name}/baseline", {"json": text})
                    self._baselines_saved.add(name)
        if self.findings_handler is not None and self._leads(set(self.source.assignment)):
            self.state.put(f"{group}/alerts", self.findings_handler.state())
        self._waiting_since = time.monotonic()
        try:
            self.state.flush()
        finally:
            self._waiting_since = None
        offsets = {k: self.positions[k] for k in keys}
        if offsets:
            try:
                self.source.commit(offsets)  # for tooling; the checkpoint is the truth
            except SinkError as exc:
                log.warning("group offsets not committed (the checkpoint holds them): %s", exc)
        for key in keys:
            self._checkpointed_at[key] = now
        self._events_since_checkpoint = 0
        self._last_checkpoint = now
        return len(keys)

    def _maybe_checkpoint(self) -> None:
        if self.state is None:
            return
        cfg = self.config.state
        now = time.monotonic()
        if (
            self._events_since_checkpoint >= cfg.every_events
            or now - self._last_checkpoint >= cfg.every_seconds
        ):
            try:
                self.checkpoint()
                self._share_windows()
            except DriftwardenError as exc:
                # Queued checkpoint records are still delivered when the broker returns;
                # until one is acknowledged, a restart replays from the previous one.
                log.warning("checkpoint not confirmed yet, will retry: %s", exc)
                self._last_checkpoint = now
        for (topic, partition), at in self._checkpointed_at.items():
            name = self.pipelines[topic].spec.name
            self.metrics.checkpoint_age.labels(name, str(partition)).set(now - at)

    def _on_kafka_error(self, name: str, fatal: bool) -> None:
        self.metrics.kafka_errors.labels(name.lstrip("_").lower() or "unknown").inc()
        if name in _BROKER_DOWN:
            self._broker_ok = False
            self._last_broker_error = time.monotonic()
        if fatal:
            log.error("fatal Kafka error %s; stopping", name)
            self.stop_event.set()

    # -- readiness -------------------------------------------------------------------
    def ready(self) -> bool:
        """Consuming: partitions assigned, the broker reachable, and no write to it
        waiting for an acknowledgement longer than the probe interval."""
        blocked = self._waiting_since is not None and (
            time.monotonic() - self._waiting_since > self.probe_interval
        )
        return bool(self.source.assignment) and self._broker_ok and not blocked

    def _refresh_ready(self) -> None:
        self._ready_gauge.set(1 if self.ready() else 0)

    # -- the loop --------------------------------------------------------------------
    def stop(self) -> None:
        self.stop_event.set()

    def run(
        self,
        *,
        max_seconds: float | None = None,
        until: Callable[[RunStats], bool] | None = None,
        on_summary: Callable[[str], None] | None = None,
    ) -> RunStats:
        """Run until ``stop()``, ``max_seconds`` or ``until(stats)``; then commit and close."""
        started = time.monotonic()
        last_summary = started
        summary_events = 0
        try:
            while not self.stop_event.is_set():
                now = time.monotonic()
                if max_seconds is not None and now - started >= max_seconds:
                    break
                self.step()
                if until is not None and until(self.stats):
                    break
                if on_summary is not None and now - last_summary >= self.config.summary_interval:
                    rate = (self.stats.events - summary_events) / max(now - last_summary, 1e-9)
                    on_summary(self.summary(rate))
                    last_summary, summary_events = now, self.stats.events
        finally:
            self.close()
        return self.stats

    def step(self) -> int:
        """Consume and fully process one batch; return how many events it had."""
        t0 = time.perf_counter()
        batches = self.source.poll()
        now = time.monotonic()
        if not batches:
            # Idle: nothing tells a quiet topic from a frozen broker but a request.
            if now - self._last_probe >= self.probe_interval:
                self._last_probe = now
                self._broker_ok = self.source.probe(self.probe_interval)
                if not self._broker_ok:
                    self._last_broker_error = now
                    log.warning("the broker did not answer within %.0fs", self.probe_interval)
            if self._broker_ok and self._events_since_checkpoint:
                self._maybe_checkpoint()  # a quiet stream still gets its last batch saved
            self._tick_stages()
            self._refresh_ready()
            return 0
        self._broker_ok = True
        self._last_probe = now
        results = []
        out: list[OutMessage] = []
        findings: list[Finding] = []
        for raw in batches:
            result = self.pipelines[raw.topic].process(raw)
            results.append(result)
            out.extend(result.out)
            findings.extend(result.findings)
        self._record_findings(findings)
        if self.findings_handler is not None:
            out.extend(self.findings_handler.handle(findings, time.time()))
        for message in out:
            self.sink.send(message)
        self._flush()
        offsets: dict[TopicPartitionKey, int] = {}
        for r in results:
            offsets.update(r.next_offsets)
        if self.state is None:
            self.source.commit(offsets)
        self.positions.update(offsets)
        self._events_since_checkpoint += sum(r.events for r in results)
        self._maybe_checkpoint()
        self._account(results, out, time.perf_counter() - t0)
        return sum(r.events for r in results)

    def _tick_stages(self) -> None:
        """Let stages judge by wall clock while no event arrives (fleet: a quiet
        partition's devices go silent); their findings are handled like a batch's."""
        findings: list[Finding] = []
        for pipeline in dict.fromkeys(self.pipelines.values()):
            for stage in pipeline.stages:
                tick = getattr(stage, "tick", None)
                if tick is not None:
                    findings.extend(tick())
        if not findings:
            return
        self._record_findings(findings)
        if self.findings_handler is not None:
            for message in self.findings_handler.handle(findings, time.time()):
                self.sink.send(message)
            self._flush()

    def _flush(self) -> None:
        # Offsets must not be committed before every outgoing message is durable.
        self._waiting_since = time.monotonic()
        try:
            while True:
                try:
                    remaining = self.sink.flush(1.0)
                except SinkError:
                    self._ready_gauge.set(0)
                    raise
                if remaining == 0:
                    return
                self._ready_gauge.set(0)
                if self.stop_event.is_set():  # stopping: leave the batch uncommitted
                    raise SinkError(f"stopped with {remaining} outgoing message(s) unacknowledged")
                log.warning("waiting for the broker to acknowledge %d message(s)", remaining)
        finally:
            self._waiting_since = None

    def _record_findings(self, findings: list[Finding]) -> None:
        record_findings(self.metrics, findings)
        if self.board is not None and findings:
            self.board.record_findings(findings, time.time())
        for f in findings:
            labels = (f.stream, f.subject, f.detector)
            if f.drift:
                self.stats.drifting.add(labels)
            else:
                self.stats.drifting.discard(labels)

    def _account(self, results: list[BatchResult], out: list[OutMessage], seconds: float) -> None:
        m, s = self.metrics, self.stats
        now = time.time()
        for r in results:
            s.add(r)
            account_batch(m, r)
            if self.board is not None:
                self.board.record_batch(
                    r.stream, events=r.events, accepted=r.accepted, rejected=r.rejected, now=now
                )
        s.batches += 1
        s.commits += 1
        s.messages_out += len(out)
        m.batch_duration.observe(seconds)
        m.batch_events.observe(sum(r.events for r in results))
        for (topic, partition), lag in self.source.lag(self.positions).items():
            m.consumer_lag.labels(topic, str(partition)).set(lag)
        self._refresh_ready()

    def summary(self, rate: float) -> str:
        s = self.stats
        lag = sum(self.source.lag(self.positions).values()) if self.source.assignment else 0
        drifting = ", ".join(f"{st}.{fld}/{det}" for st, fld, det in sorted(s.drifting)) or "none"
        return (
            f"events={s.events} rate={rate:,.0f}/s invalid={s.invalid} "
            f"lag={lag} ready={'yes' if self.ready() else 'no'} drifting={drifting}"
        )

    def close(self) -> None:
        try:
            self._flush_quietly()
            if self.state is not None and self.positions and self.final_checkpoint:
                try:
                    self.checkpoint()
                except DriftwardenError as exc:
                    log.error("final checkpoint failed (a restart replays from the last): %s", exc)
        finally:
            self._ready_gauge.set(0)
            self.source.close()
            if self.findings_handler is not None:
                self.findings_handler.close()
            if self.state is not None:
                self.state.close()

    def _flush_quietly(self) -> None:
        try:
            if self.sink.flush(10.0):
                log.warning("some outgoing messages were not acknowledged before close")
        except SinkError as exc:
            log.error("outgoing messages lost on close: %s", exc)
