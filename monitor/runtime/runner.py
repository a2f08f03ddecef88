"""The service loop: consume a batch, run its transaction, checkpoint, repeat.

The parts, one job each: ``monitor.runtime.transaction`` (process -> findings -> outgoing
messages; counts), ``monitor.runtime.assignment`` (rebalances: restore and seek, hand over
alert state), ``monitor.runtime.checkpointer`` (positions, checkpoint cadence, window
sharing), ``monitor.runtime.readiness`` (broker probing, the ready gauge). This module
wires them and runs the loop; a stop request (SIGTERM/SIGINT) lets the current
batch finish all its steps before closing.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator

from connectors.base import MessageSink
from monitor.config.schema import Config
from monitor.errors import DriftwardenError
from monitor.metrics import Metrics
from monitor.pipeline.stage import Stage, registered_stages
from monitor.pipeline.stream import DecodedInput, StreamPipeline, build_pipelines
from monitor.runtime.assignment import Assignment, kafka_sink, kafka_source
from monitor.runtime.checkpointer import Checkpointer
from monitor.runtime.readiness import Readiness
from monitor.runtime.state import StateStore
from monitor.runtime.summary import summary_line
from monitor.runtime.transaction import (
    BatchSource,
    BatchTransaction,
    FetchReporting,
    FindingsHandler,
    OpenTransaction,
    RunStats,
    flush_durably,
    flush_quietly,
    send_all,
)
from monitor.status import StatusBoard

__all__ = ["BatchSource", "FindingsHandler", "RunStats", "Runner"]

log = logging.getLogger("driftwarden.runner")

# Runners inside their loop (see _frozen_heap).
_running = 0
_running_lock = threading.Lock()


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """While a runner loops, the objects that existed when it started (modules, the
    compiled kernels, configuration, the baselines: hundreds of thousands) are left
    out of the garbage collector's full passes (``gc.freeze``). Each batch makes
    thousands of short-lived findings; the collections they trigger otherwise walk
    that whole heap again and again (measured: ~0.8 µs of CPU per event of a 20-field
    stream, over a quarter of the service's). A collection first frees what is garbage;
    the last runner to stop hands the objects back (``gc.unfreeze``)."""
    global _running
    with _running_lock:
        _running += 1
        if _running == 1:
            gc.collect()
            gc.freeze()
    try:
        yield
    finally:
        with _running_lock:
            _running -= 1
            if _running == 0:
                gc.unfreeze()


class Runner:
    """Wires source, pipelines, sink, state and metrics together and runs the loop."""

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics | None = None,
        source: BatchSource | None = None,
        sink: MessageSink | None = None,
        stages: Callable[[StreamPipeline], list[Stage]] | None = registered_stages,
        findings_handler: FindingsHandler | None = None,
        state_store: StateStore | None = None,
        board: StatusBoard | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.pipelines = build_pipelines(config, self.metrics, stages)
        self.findings_handler = findings_handler
        if state_store is None and source is None and config.state.enabled:
            state_store = StateStore(config.kafka, config.state.topic)
        self.state = state_store
        self.final_checkpoint = True  # False skips the checkpoint on close, as a crash would
        self.stats = RunStats()
        self.stop_event = threading.Event()
        self.readiness = Readiness(
            lambda: bool(self.source.assignment), lambda t: self.source.probe(t), self.metrics.ready
        )
        self.checkpointer = Checkpointer(
            config,
            self.pipelines,
            state_store,
            lambda: self.source,
            findings_handler,
            self.metrics,
            self.readiness,
        )
        self.assignment = Assignment(
            config,
            self.pipelines,
            self.checkpointer,
            lambda: self.source,
            findings_handler,
            self.metrics,
            self.stop_event,
        )
        self.transaction = BatchTransaction(
            self.pipelines, self.metrics, findings_handler, self.stats, board
        )
        self.source: BatchSource = (
            source
            if source is not None
            else kafka_source(config, self.assignment, self._on_kafka_error)
        )
        self.sink: MessageSink = sink if sink is not None else kafka_sink(config, self.metrics)
        self.positions = self.checkpointer.positions
        self._fetching = self.source if isinstance(self.source, FetchReporting) else None
        self._fetch_totals = (0, 0)  # the fetcher's requests and bytes counted so far
        # A begun batch whose stage runs apart, and the next batch read and decoded
        # meanwhile (see ``step``); a rebalance first finishes the begun one.
        self._open: OpenTransaction | None = None
        self._ahead: tuple[list[DecodedInput], float] | None = None
        self.assignment.settle = self._settle

    def _on_kafka_error(self, name: str, fatal: bool) -> None:
        self.metrics.kafka_errors.labels(name.lstrip("_").lower() or "unknown").inc()
        self.readiness.on_kafka_error(name)
        if fatal:
            log.error("fatal Kafka error %s; stopping", name)
            self.stop_event.set()

    def ready(self) -> bool:
        """Partitions assigned, the broker reachable, no write to it stuck."""
        return self.readiness.ready()

    def checkpoint(self, partitions: list[tuple[str, int]] | None = None) -> int:
        self._settle()
        return self.checkpointer.checkpoint(partitions)

    def stop(self) -> None:
        self.stop_event.set()

    # -- the loop --------------------------------------------------------------------
    def run(
        self,
        *,
        max_seconds: float | None = None,
        until: Callable[[RunStats], bool] | None = None,
        on_summary: Callable[[str], None] | None = None,
    ) -> RunStats:
        """Run until ``stop()``, ``max_seconds`` or ``until(stats)``; then commit and close."""
        with _frozen_heap():
            return self._run(max_seconds=max_seconds, until=until, on_summary=on_summary)

    def _run(
        self,
        *,
        max_seconds: float | None = None,
        until: Callable[[RunStats], bool] | None = None,
        on_summary: Callable[[str], None] | None = None,
    ) -> RunStats:
        """The loop of ``run``."""
        started = last_summary = time.monotonic()
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
        """Consume and fully process one batch; return how many events it had.

        Reading a backlog, a stage that can run apart (the drift stage) folds the
        batch in on a worker thread while this thread reads and decodes the next
        batch, kept for the next step. The batch is then finished as always: its
        findings handled, its messages sent and flushed, its position advanced.
        Decoding is all that happens early: every stage still sees the batches one
        after another, and a rebalance in that read first finishes this batch
        (``_settle``)."""
        started = time.perf_counter()
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            decoded, started = ahead
        else:
            batches = self.source.poll()
            self._account_poll(time.perf_counter() - started)
            if not batches:
                self.readiness.on_idle()  # nothing tells a quiet topic from a frozen broker
                if self.readiness.broker_ok and self.checkpointer.events_since:
                    self.checkpointer.maybe_checkpoint()  # a quiet stream still gets saved
                self._tick_stages()
                self.readiness.refresh()
                return 0
            decoded = self.transaction.decode(batches)
        self.readiness.on_batch()
        opened = self.transaction.begin(decoded, started, apart=self._backlog())
        if opened.apart:
            self._open = opened
            t = time.perf_counter()
            try:
                batches = self.source.poll()
            except BaseException:
                self._settle()  # as if this batch had been finished before the read
                raise
            self._account_poll(time.perf_counter() - t)
            if batches:
                self._ahead = (self.transaction.decode(batches), t)
            if self._open is None:  # a rebalance in that read finished it
                return sum(len(d.raw.values) for d in decoded)
            self._open = None
        return self._conclude(opened)

    def _backlog(self) -> bool:
        """The next batch is fetched already (direct fetch), and no stop is asked for."""
        if self._fetching is None or self.stop_event.is_set():
            return False
        status = self._fetching.fetch_status()
        return status is not None and status.queued_bytes > 0

    def _conclude(self, opened: OpenTransaction) -> int:
        """Finish a begun batch: findings, messages sent and acknowledged, position
        advanced (and checkpointed when due), counts."""
        prepared = self.transaction.finish(opened)
        if opened.apart:
            self.metrics.batches_apart.inc()
        send_all(self.sink, prepared.out)
        self._flush()
        self.checkpointer.advance(prepared.next_offsets, prepared.events)
        self.checkpointer.maybe_checkpoint()
        self.transaction.complete(prepared)
        for (topic, partition), lag in self.source.lag(self.positions).items():
            self.metrics.consumer_lag.labels(topic, str(partition)).set(lag)
        self.readiness.refresh()
        return prepared.events

    def _settle(self) -> None:
        """Finish the batch whose stage runs apart, if any (before a rebalance changes
        what the stages hold, and before a checkpoint outside the loop)."""
        opened, self._open = self._open, None
        if opened is not None:
            self._conclude(opened)

    def _account_poll(self, seconds: float) -> None:
        """The poll's time and, on the direct path, the fetcher's queue and totals."""
        m = self.metrics
        m.poll_seconds.inc(seconds)
        status = None if self._fetching is None else self._fetching.fetch_status()
        if status is None:
            return
        m.fetch_queued_bytes.set(status.queued_bytes)
        requests, fetched = self._fetch_totals
        if status.requests < requests or status.fetched_bytes < fetched:
            requests, fetched = 0, 0  # a new fetcher counts from zero
        m.fetch_requests.inc(status.requests - requests)
        m.fetch_bytes.inc(status.fetched_bytes - fetched)
        self._fetch_totals = (status.requests, status.fetched_bytes)

    def _tick_stages(self) -> None:
        """Stages that judge by wall clock while no event arrives (fleet: a quiet
        partition's devices go silent): their findings are handled like a batch's."""
        out = self.transaction.tick()
        if out:
            send_all(self.sink, out)
            self._flush()

    def _flush(self) -> None:
        flush_durably(self.sink, self.readiness, self.stop_event.is_set)

    def summary(self, rate: float) -> str:
        """One console line: rate, invalid events, lag, readiness, what drifts."""
        lag = sum(self.source.lag(self.positions).values()) if self.source.assignment else 0
        return summary_line(self.stats, rate, lag, self.ready())

    def close(self) -> None:
        try:
            if self._open is not None:  # left by an exception: not finished, not saved
                self._open.wait()
                self._open = None
                self.final_checkpoint = False
            flush_quietly(self.sink)
            if self.state is not None and self.positions and self.final_checkpoint:
                try:
                    self.checkpointer.checkpoint()
                except DriftwardenError as exc:
                    log.error("final checkpoint failed (a restart replays from the last): %s", exc)
        finally:
            self.readiness.not_ready()
            self.source.close()
            if self.findings_handler is not None:
                self.findings_handler.close()
            if self.state is not None:
                self.state.close()
