"""One batch transaction, shared by the native runner and the Faust adapter.

Per consumed batch, in this order (at-least-once, nothing skipped):

1. ``prepare``: every stream's pipeline processes its part (decode, checks,
   stages); the findings update the drift metrics and go to the findings handler
   (the alert engine), which returns the alert and retrain messages; the batch's
   outgoing messages are the dead letters plus those;
2. the caller sends them and waits until the broker acknowledged all of them
   (``send_all`` + the runner's flush loop, or the Faust producer's futures);
3. the caller makes the batch's position durable: the runner checkpoints and
   commits, Faust acks the events;
4. ``complete``: counts and batch metrics.

A crash between 2 and 3 replays the batch: dead letters and alerts may then appear
twice, with the same content (alerts carry deterministic ids).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from connectors.base import MessageSink, OutMessage
from connectors.fetch import FetchStatus
from connectors.kafka import RawBatch, TopicPartitionKey
from detectors.base import Finding, Verdicts
from monitor.checkpoints import AlertState
from monitor.errors import SinkError
from monitor.metrics import Metrics
from monitor.pipeline.stage import Ticking
from monitor.pipeline.stream import (
    BatchResult,
    DecodedInput,
    OpenBatch,
    StreamPipeline,
    account_batch,
    record_findings,
    record_verdicts,
    unique_pipelines,
)
from monitor.runtime.readiness import Readiness
from monitor.status import StatusBoard

__all__ = [
    "BatchSource",
    "BatchTransaction",
    "FindingsHandler",
    "OpenTransaction",
    "PreparedBatch",
    "RunStats",
    "flush_durably",
    "flush_quietly",
    "send_all",
]

log = logging.getLogger("driftwarden.runner")


class BatchSource(Protocol):
    """Where batches come from (``connectors.kafka.KafkaSource``, or a fake in tests)."""

    assignment: set[TopicPartitionKey]

    def poll(self) -> list[RawBatch]: ...

    def commit(self, next_offsets: Mapping[TopicPartitionKey, int]) -> None: ...

    def lag(self, positions: Mapping[TopicPartitionKey, int]) -> dict[TopicPartitionKey, int]: ...

    def probe(self, timeout: float) -> bool: ...

    def partition_count(self, topic: str) -> int: ...

    def close(self) -> None: ...


@runtime_checkable
class FetchReporting(Protocol):
    """A source that fetches ahead on a thread of its own and says how far
    (``KafkaSource`` on the direct path; None otherwise)."""

    def fetch_status(self) -> FetchStatus | None: ...


class FindingsHandler(Protocol):
    """Consumes findings after each batch (the alert engine); returns messages to send.

    Its state is kept per stream: whoever judges a stream checkpoints that stream's
    part (``state(stream)``) and continues it (``restore(stream, state)``);
    ``release(stream)`` forgets a stream another process now judges.
    """

    def handle(
        self, findings: list[Finding], now: float, verdicts: Sequence[tuple[int, Verdicts]] = ()
    ) -> list[OutMessage]:
        """``verdicts``: clean verdicts as rows, each block with the place in
        ``findings`` where its rows' findings would stand."""
        ...

    def state(self, stream: str) -> AlertState: ...

    def restore(self, stream: str, state: AlertState) -> None: ...

    def release(self, stream: str) -> None: ...

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
        self.findings += len(result.findings) + sum(len(v) for v in result.verdicts)


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """A processed batch whose outgoing messages are not yet durable."""

    results: tuple[BatchResult, ...]
    findings: tuple[Finding, ...]
    out: tuple[OutMessage, ...]
    started: float  # time.perf_counter() when the batch was taken

    @property
    def events(self) -> int:
        return sum(r.events for r in self.results)

    @property
    def next_offsets(self) -> dict[TopicPartitionKey, int]:
        """Per partition, the offset after the batch's last event."""
        offsets: dict[TopicPartitionKey, int] = {}
        for r in self.results:
            offsets.update(r.next_offsets)
        return offsets


@dataclass(frozen=True, slots=True)
class OpenTransaction:
    """A batch between ``BatchTransaction.begin`` and ``finish``."""

    parts: tuple[tuple[StreamPipeline, OpenBatch], ...]
    started: float  # time.perf_counter() when the batch was taken

    @property
    def apart(self) -> bool:
        """A stage runs apart for this batch (``StreamPipeline.begin``)."""
        return any(o.apart for _, o in self.parts)

    def wait(self) -> None:
        """Wait until no stage runs apart for this batch any more."""
        for _, o in self.parts:
            o.wait()


class BatchTransaction:
    """Steps 1 and 4 of a batch (see the module doc); the caller owns 2 and 3."""

    def __init__(
        self,
        pipelines: Mapping[str, StreamPipeline],
        metrics: Metrics,
        findings_handler: FindingsHandler | None,
        stats: RunStats,
        board: StatusBoard | None = None,
    ) -> None:
        self.pipelines = pipelines
        self.metrics = metrics
        self.findings_handler = findings_handler
        self.stats = stats
        self.board = board  # the /status page's record, when served
        # This transaction reads clean verdicts as rows (handle_findings).
        for pipeline in unique_pipelines(pipelines):
            pipeline.compact_clean = True

    def prepare(self, batches: Sequence[RawBatch], started: float | None = None) -> PreparedBatch:
        """Process ``batches``; return their results and every message they make."""
        return self.finish(self.begin(self.decode(batches), started))

    def decode(self, batches: Sequence[RawBatch]) -> list[DecodedInput]:
        """Step 1, first part: decode ``batches`` (``prepare`` = ``decode``, ``begin``,
        ``finish``; the runner decodes the next batch between ``begin`` and ``finish``
        while a stage runs apart)."""
        return [self.pipelines[raw.topic].decode(raw) for raw in batches]

    def begin(
        self, decoded: Sequence[DecodedInput], started: float | None = None, *, apart: bool = False
    ) -> OpenTransaction:
        """Step 1, second part: checks and stages (with ``apart``, the stages that can
        run on a worker thread meanwhile: ``StreamPipeline.begin``)."""
        t0 = time.perf_counter() if started is None else started
        return OpenTransaction(
            tuple(
                (self.pipelines[d.raw.topic], self.pipelines[d.raw.topic].begin(d, apart=apart))
                for d in decoded
            ),
            t0,
        )

    def finish(self, opened: OpenTransaction) -> PreparedBatch:
        """Step 1, last part: wait for stages running apart; the results and every
        message they make."""
        results = tuple(pipeline.finish(o) for pipeline, o in opened.parts)
        out: list[OutMessage] = []
        findings: list[Finding] = []
        verdicts: list[tuple[int, Verdicts]] = []
        for r in results:
            out.extend(r.out)
            findings.extend(r.findings)
            verdicts.extend((len(findings), v) for v in r.verdicts)
        out.extend(self.handle_findings(findings, verdicts))
        return PreparedBatch(results, tuple(findings), tuple(out), opened.started)

    def handle_findings(
        self, findings: list[Finding], verdicts: Sequence[tuple[int, Verdicts]] = ()
    ) -> list[OutMessage]:
        """Metrics, drift summary, status board and alerts of ``findings`` and of
        the clean verdicts ``verdicts`` (each block with its place in ``findings``,
        taken in that order); the alert and retrain messages to send."""
        now = time.time()
        done = 0
        for at, block in [*verdicts, (len(findings), None)]:
            part = findings[done:at]
            done = at
            if part:
                record_findings(self.metrics, part)
                if self.board is not None:
                    self.board.record_findings(part, now)
                for f in part:
                    labels = (f.stream, f.subject, f.detector)
                    if f.drift:
                        self.stats.drifting.add(labels)
                    else:
                        self.stats.drifting.discard(labels)
            if block is not None:
                record_verdicts(self.metrics, block)
                if self.board is not None:
                    self.board.record_verdicts(block, now)
                drifting = self.stats.drifting
                if drifting:
                    for subject, detector in zip(block.subjects, block.detectors, strict=True):
                        drifting.discard((block.stream, subject, detector))
        if self.findings_handler is None:
            return []
        return self.findings_handler.handle(findings, time.time(), verdicts)

    def tick(self) -> list[OutMessage]:
        """Findings of stages that judge by wall clock while no event arrives (fleet:
        a quiet partition's devices go silent), handled like a batch's."""
        findings = [
            f
            for pipeline in unique_pipelines(self.pipelines)
            for stage in pipeline.stages
            if isinstance(stage, Ticking)
            for f in pipeline.tick_stage(stage)
        ]
        return self.handle_findings(findings) if findings else []

    def complete(self, batch: PreparedBatch, *, committed: bool = True) -> None:
        """Count a batch whose outputs are durable (and position committed, if so)."""
        m, s = self.metrics, self.stats
        now = time.time()
        for r in batch.results:
            s.add(r)
            account_batch(m, r)
            if self.board is not None:
                self.board.record_batch(
                    r.stream, events=r.events, accepted=r.accepted, rejected=r.rejected, now=now
                )
        s.batches += 1
        s.commits += int(committed)
        s.messages_out += len(batch.out)
        m.batch_duration.observe(time.perf_counter() - batch.started)
        m.batch_events.observe(batch.events)


def send_all(sink: MessageSink, out: Sequence[OutMessage]) -> None:
    """Hand every message to ``sink`` (durable only after its ``flush``)."""
    for message in out:
        sink.send(message)


def flush_durably(sink: MessageSink, readiness: Readiness, stopping: Callable[[], bool]) -> None:
    """Step 2: wait until the broker acknowledged every outgoing message (offsets must
    not be committed before). Readiness drops while it waits; a stop request while
    waiting raises ``SinkError`` so that the batch stays uncommitted."""
    with readiness.waiting():
        while True:
            try:
                remaining = sink.flush(1.0)
            except SinkError:
                readiness.not_ready()
                raise
            if remaining == 0:
                return
            readiness.not_ready()
            if stopping():
                raise SinkError(f"stopped with {remaining} outgoing message(s) unacknowledged")
            log.warning("waiting for the broker to acknowledge %d message(s)", remaining)


def flush_quietly(sink: MessageSink, timeout: float = 10.0) -> None:
    """At close: give queued messages ``timeout`` seconds; log what could not be sent."""
    try:
        if sink.flush(timeout):
            log.warning("some outgoing messages were not acknowledged before close")
    except SinkError as exc:
        log.error("outgoing messages lost on close: %s", exc)
