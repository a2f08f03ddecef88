"""Feed a Faust app's stream into driftwarden's pipeline and detectors.

For teams that already run Faust (``faust-streaming``) workers. Driftwarden's own
runtime stays on confluent-kafka (a Faust agent is ~20x slower on the same
machine, see ``bench/RESULTS.md``), but a Faust app can hand its batches to the
same schema checks, dead letters, metrics, drift detectors and alerts. Optional
extra: ``pip install 'driftwarden[faust]'``; nothing else imports this module.

Two lines in an existing app::

    from monitor.runtime.faust import attach
    monitor = attach(app, load_config("driftwarden.yaml"), "iot.sensors")

``attach`` declares an agent over the topic (raw bytes, ``value_serializer="raw"``)
that takes batches with ``stream.take_events(batch_size, within)`` and awaits
``FaustMonitor.process`` for each. To wire it yourself::

    monitor = FaustMonitor(config, app=app)
    topic = app.topic("iot.sensors", value_type=bytes, value_serializer="raw")

    @app.agent(topic)
    async def check(stream):
        async for events in stream.take_events(1000, within=1.0):
            await monitor.process("iot.sensors", events)

``process`` also takes plain ``(partition, offset, key, value)`` tuples (a fifth
item, the timestamp in ms, is optional) for callers that batch by themselves.

Where outgoing messages go: dead letters and alert/retrain messages are sent with
the Faust app's own producer (``app.producer.send``, aiokafka, ``acks`` as the app
configures them; the default is all) and every send is awaited until the broker
acknowledged it. Pass ``sink=`` (any ``connectors.base.MessageSink``, e.g. a
``connectors.kafka.KafkaSink``) to send through that instead; its blocking
``flush`` then runs in a worker thread. With neither, ``process`` raises.

Offsets, at-least-once: Faust commits a message's offset once every stream that
received it acked it (``Consumer.ack``), and ``take_events`` acks a batch when the
loop body returns *or raises* (its ``finally``), so a failure would commit a batch
whose dead letters were never delivered. ``process`` therefore returns only after
the batch's outgoing messages are acknowledged, and when processing or delivery
fails or is cancelled (worker stop, rebalance) it abandons the batch's messages
first: it marks them done (``Message.acked = True``) without handing them to the
consumer, so the later ack is a no-op, their offsets never enter Faust's commit
list and the worker's stop does not wait for them. Faust then commits that
partition only up to the failed batch (``commit()`` stops at the first offset not
acked); the agent raises and Faust restarts it; a worker restart or rebalance
replays from the failed batch. Dead letters and alerts can then appear twice
(alerts carry deterministic ids). One Faust caveat: before a partition's first
commit, Faust does not check for a gap at the head of its acked offsets, so a
failure in the group's very first batches can be skipped over by later commits.
``BatchResult.next_offsets`` are the offsets Faust will commit for the batch (last
offset + 1 per partition). Run the agent with ``concurrency=1`` (the default): the
detectors need each partition's events in order.

Partition counts: windows count events of the whole stream, so each stream needs
its topics' partition counts. Give them (``partitions={"iot.sensors": 12}``) or let
the monitor read them from the app's consumer (``app.consumer.topic_partitions``)
at the stream's first batch (and at later ones until the metadata knows them).

Metrics go to ``registry`` (a fresh one by default); ``attach`` serves them on the
configuration's ``metrics.listen`` address when ``metrics.enabled`` (``/metrics``,
``/healthz``, ``/readyz``), from worker start to worker stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from connectors.base import MessageSink, OutMessage
from connectors.kafka import RawBatch
from monitor.alerting.dispatch import build_findings_handler
from monitor.config.schema import Config
from monitor.errors import ConfigError, SinkError
from monitor.metrics import Metrics, MetricsServer
from monitor.pipeline.stage import registered_stages
from monitor.pipeline.stream import BatchResult, build_pipelines, output_topics
from monitor.runtime.transaction import BatchTransaction, RunStats, send_all

__all__ = ["FaustMonitor", "FaustStats", "attach"]

log = logging.getLogger("driftwarden.faust")


def _is_event(item: Any) -> bool:
    return hasattr(item, "message") and hasattr(item, "ack")


def _abandon(events: Sequence[Any]) -> None:
    """Make Faust forget these messages without committing them (see the module doc)."""
    for e in events:
        e.message.acked = True


def _ms(seconds: float | None) -> int:
    # Faust keeps seconds as a float; Kafka and the dead-letter header use ms.
    return -1 if seconds is None or seconds < 0 else round(seconds * 1000.0)


def _row_ms(row: Sequence[Any]) -> int:
    ts = row[4] if len(row) > 4 else None
    return -1 if ts is None or ts < 0 else int(ts)


def to_raw_batch(topic: str, events: Sequence[Any]) -> RawBatch:
    """A ``RawBatch`` of ``topic`` from Faust events or ``(partition, offset, key, value)``."""
    n = len(events)
    if n and _is_event(events[0]):
        messages = [e.message for e in events]
        for m in messages:
            if m.topic != topic:
                raise ValueError(f"an event of topic {m.topic!r} in a batch of {topic!r}")
        return RawBatch(
            topic=topic,
            values=[m.value for m in messages],
            partitions=np.fromiter((m.partition for m in messages), dtype=np.int32, count=n),
            offsets=np.fromiter((m.offset for m in messages), dtype=np.int64, count=n),
            keys=[m.key for m in messages],
            timestamps=[_ms(m.timestamp) for m in messages],
        )
    return RawBatch(
        topic=topic,
        values=[row[3] for row in events],
        partitions=np.fromiter((row[0] for row in events), dtype=np.int32, count=n),
        offsets=np.fromiter((row[1] for row in events), dtype=np.int64, count=n),
        keys=[row[2] for row in events],
        timestamps=[_row_ms(row) for row in events],
    )


@dataclass
class FaustStats(RunStats):
    """Counts since start (``process`` calls that completed), and failed calls."""

    failures: int = 0


class FaustMonitor:
    """Driftwarden's pipelines for the streams of ``config``, fed by Faust batches."""

    def __init__(
        self,
        config: Config,
        *,
        registry: CollectorRegistry | None = None,
        sink: MessageSink | None = None,
        app: Any = None,
        drift: bool = True,
        flush_timeout: float = 30.0,
        partitions: dict[str, int] | None = None,
    ) -> None:
        self.config = config
        self.metrics = Metrics(registry)
        self.sink = sink
        self.app = app
        self.flush_timeout = flush_timeout
        self.pipelines = build_pipelines(config, self.metrics, registered_stages if drift else None)
        self.findings_handler = build_findings_handler(config, self.metrics)
        self.stats = FaustStats()
        self.transaction = BatchTransaction(
            self.pipelines, self.metrics, self.findings_handler, self.stats
        )
        self.server: MetricsServer | None = None
        # Partition count per topic (given, or read from the app's consumer): stream
        # windows count events of the whole stream (see monitor.pipeline.drift).
        self.partitions = dict(partitions or {})
        self._sized: set[str] = set()
        self._declared = False
        self._healthy = True
        self.metrics.ready.set(0)

    # -- topics and readiness --------------------------------------------------------
    @property
    def output_topics(self) -> list[str]:
        return output_topics(self.config)

    def ready(self) -> bool:
        """The last batch was delivered (and at least one was processed)."""
        return self._healthy and self.stats.batches > 0

    # -- the batch -------------------------------------------------------------------
    async def process(self, topic: str, events: Sequence[Any]) -> BatchResult:
        """Check, measure and dead-letter one batch; return once its outputs are durable."""
        t0 = time.perf_counter()
        pipeline = self.pipelines.get(topic)
        if pipeline is None:
            raise ValueError(f"topic {topic!r} is not in any configured stream")
        if not events:
            return BatchResult(stream=pipeline.spec.name, events=0, accepted=0, rejected={})
        if pipeline.spec.name not in self._sized:
            self._size(pipeline)
        try:
            prepared = self.transaction.prepare([to_raw_batch(topic, events)], t0)
            await self._deliver(list(prepared.out))
        except BaseException:
            if _is_event(events[0]):
                _abandon(events)
            self._healthy = False
            self.stats.failures += 1
            self.metrics.ready.set(0)
            raise
        self._healthy = True
        # Faust commits the offsets once the events are acked (after this returns).
        self.transaction.complete(prepared, committed=False)
        self.metrics.ready.set(1)
        (result,) = prepared.results
        return result

    def partition_count(self, topic: str) -> int | None:
        """``topic``'s partition count: given to the constructor, else from the Faust
        app's consumer metadata (None while it does not know the topic)."""
        if topic in self.partitions:
            return self.partitions[topic]
        consumer = getattr(self.app, "consumer", None)
        try:
            count = None if consumer is None else consumer.topic_partitions(topic)
        except Exception:  # the app's transport may not know the topic yet
            count = None
        return int(count) if count else None

    def _size(self, pipeline: Any) -> None:
        """Give ``pipeline`` its stream's partition count once every topic's is known."""
        counts = [self.partition_count(t) for t in pipeline.spec.all_topics]
        if any(c is None for c in counts):
            return  # asked again with the next batch
        pipeline.set_partition_count(sum(c for c in counts if c is not None))
        self._sized.add(pipeline.spec.name)

    async def _deliver(self, out: list[OutMessage]) -> None:
        if not out:
            return
        if self.sink is not None:
            await self._deliver_sink(self.sink, out)
        elif self.app is not None:
            await self._deliver_app(out)
        else:
            raise ConfigError(
                "FaustMonitor needs app= (its producer sends the dead letters) or sink="
            )

    async def _deliver_sink(self, sink: MessageSink, out: list[OutMessage]) -> None:
        send_all(sink, out)
        deadline = time.monotonic() + self.flush_timeout
        while True:
            remaining = await asyncio.to_thread(sink.flush, 1.0)
            if remaining == 0:
                return
            if time.monotonic() > deadline:
                raise SinkError(f"{remaining} message(s) not acknowledged in time")
            log.warning("waiting for the broker to acknowledge %d message(s)", remaining)

    async def _deliver_app(self, out: list[OutMessage]) -> None:
        if not self._declared:
            await declare_topics(self.app, self.output_topics)
            self._declared = True
        producer = self.app.producer
        futures: list[Awaitable[Any]] = []
        for m in out:
            futures.append(
                await producer.send(m.topic, m.key, m.value, None, None, list(m.headers) or None)
            )
        try:
            await asyncio.wait_for(asyncio.gather(*futures), self.flush_timeout)
        except TimeoutError as exc:
            raise SinkError(
                f"{len(out)} message(s) not acknowledged in {self.flush_timeout} s"
            ) from exc
        except SinkError:
            raise
        except Exception as exc:
            raise SinkError(f"delivery failed: {exc!r}") from exc

    # -- lifecycle -------------------------------------------------------------------
    def start_metrics_server(self) -> MetricsServer | None:
        """Serve ``/metrics`` on ``config.metrics.listen`` (None when disabled)."""
        if not self.config.metrics.enabled or self.server is not None:
            return self.server
        c = self.config.metrics
        token = c.token.get_secret_value() if c.token is not None else None
        self.server = MetricsServer(
            self.metrics,
            c.host,
            c.port,
            ready=self.ready,
            token=token,
            setting="metrics.listen (or DRIFTWARDEN_METRICS_LISTEN)",
        ).start()
        host, port = self.server.address
        log.info("driftwarden metrics on http://%s:%d/metrics", host, port)
        return self.server

    def close(self) -> None:
        """Stop the metrics server and the alert dispatcher."""
        self.metrics.ready.set(0)
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.findings_handler is not None:
            self.findings_handler.close()
            self.findings_handler = None


async def declare_topics(app: Any, topics: Sequence[str]) -> None:
    """Create the output topics that do not exist yet (one partition), if allowed."""
    for name in topics:
        try:
            await app.topic(name, partitions=1).maybe_declare()
        except Exception as exc:  # production clusters often create topics by tooling
            log.warning("could not declare topic %s: %s", name, exc)


def attach(
    app: Any,
    config: Config,
    topic_name: str,
    batch_size: int = 1000,
    within: float = 1.0,
    *,
    registry: CollectorRegistry | None = None,
    sink: MessageSink | None = None,
    serve_metrics: bool = True,
    agent_name: str | None = None,
    partitions: dict[str, int] | None = None,
) -> FaustMonitor:
    """Declare on ``app`` an agent that feeds ``topic_name`` to driftwarden; return the monitor.

    The stream's other topics (a model's label and deploy topics) get an agent each on
    the same monitor, so their events reach the same stages. The topics are read as
    raw bytes. Batches are up to ``batch_size`` events, or what
    arrived within ``within`` seconds. With ``serve_metrics`` (and
    ``config.metrics.enabled``) the worker serves the metrics while it runs.
    ``partitions`` (topic -> partition count) sizes the stream windows; without it
    the count is read from the app's consumer metadata at the first batch.
    """
    monitor = FaustMonitor(config, registry=registry, sink=sink, app=app, partitions=partitions)
    if topic_name not in monitor.pipelines:
        raise ConfigError(f"topic {topic_name!r} is not in any configured stream")
    # the stream's other topics (a model's label and deploy topics) feed the same stages
    topics = [
        topic_name,
        *(t for t in monitor.pipelines[topic_name].spec.all_topics if t != topic_name),
    ]
    for each in topics:
        _declare_agent(
            app, monitor, each, batch_size, within, agent_name if each == topic_name else None
        )

    if serve_metrics and config.metrics.enabled:

        async def driftwarden_metrics() -> None:
            monitor.start_metrics_server()
            try:
                await asyncio.Event().wait()  # until the worker stops (cancels the task)
            finally:
                monitor.close()

        app.task(driftwarden_metrics)
    return monitor


def _declare_agent(
    app: Any,
    monitor: FaustMonitor,
    topic_name: str,
    batch_size: int,
    within: float,
    agent_name: str | None,
) -> None:
    topic = app.topic(
        topic_name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )
    name = agent_name or f"driftwarden.{topic_name}"

    async def driftwarden_agent(stream: Any) -> None:
        async for events in stream.take_events(batch_size, within):
            try:
                await monitor.process(topic_name, events)
            except Exception:
                log.exception(
                    "batch of %d event(s) not processed; its offsets stay uncommitted", len(events)
                )
                raise

    app.agent(topic, name=name)(driftwarden_agent)
