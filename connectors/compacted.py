"""A compacted topic as a key -> bytes log: write records, read the latest of every key.

The state store keeps its checkpoints here (``monitor.runtime.state`` encodes them);
this module only moves bytes. ``CompactedTopic`` talks to Kafka; ``MemoryTopic`` is
the same contract over a dict shared by its instances, for tests.

>>> shared: dict[str, bytes] = {}
>>> a, b = MemoryTopic(shared), MemoryTopic(shared)
>>> a.produce("k", b"v1"); a.flush(); b.read_to_end()
>>> b.records["k"]
b'v1'
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from connectors.errors import DriftwardenError, SinkError
from connectors.kafka import client_options, ensure_topics

__all__ = ["CompactedTopic", "KeyedLog", "MemoryTopic"]


class KeyedLog(Protocol):
    """What the state store needs of its topic."""

    name: str
    records: dict[str, bytes]  # key -> latest value, as last read or written here

    def produce(self, key: str, value: bytes) -> None: ...

    def flush(self, timeout: float = 30.0) -> None: ...

    def read_to_end(self, timeout: float = 30.0) -> None: ...

    def close(self) -> None: ...


class CompactedTopic:
    """A compacted Kafka topic: ``produce`` queues, ``flush`` waits for every ack (or
    raises ``SinkError``), ``read_to_end`` folds in what any process wrote since."""

    def __init__(
        self,
        options: Mapping[str, Any],
        topic: str,
        *,
        create: bool = True,
        max_record_bytes: int = 1_048_576,
    ) -> None:
        from confluent_kafka import Producer

        self.name = topic
        self._options = dict(options)
        # One record per produce request: the broker's end offset is then exact even on
        # brokers whose ListOffsets answer counts record batches (LOCAL-STACK.md).
        self._producer = Producer(
            {
                **client_options(options),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 0,
                "batch.num.messages": 1,
                "message.max.bytes": max_record_bytes,
            }
        )
        self._failures: list[str] = []
        self.records: dict[str, bytes] = {}
        self._positions: dict[int, int] = {}
        self._reader: Any = None
        if create:
            ensure_topics(options, [topic], config={"cleanup.policy": "compact"})

    def _delivered(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._failures.append(str(err))

    def produce(self, key: str, value: bytes) -> None:
        self.records[key] = value
        while True:
            try:
                self._producer.produce(
                    self.name, value=value, key=key.encode(), on_delivery=self._delivered
                )
                break
            except BufferError:
                self._producer.poll(0.05)
        self._producer.poll(0)

    def flush(self, timeout: float = 30.0) -> None:
        """Block until every queued record is acknowledged (or raise ``SinkError``)."""
        deadline = time.monotonic() + timeout
        while self._producer.flush(1.0) > 0:
            if time.monotonic() > deadline:
                raise SinkError(f"records of {self.name} not acknowledged within {timeout}s")
        if self._failures:
            failures, self._failures = self._failures, []
            raise SinkError(f"record of {self.name} not written: {failures[0]}")

    def read_to_end(self, timeout: float = 30.0) -> None:
        """Read every record written since the last call; ``DriftwardenError`` when the
        topic cannot be read to its end in time."""
        from confluent_kafka import KafkaException

        try:
            self._read_to_end(timeout)
        except KafkaException as exc:
            raise DriftwardenError(f"topic {self.name}: {exc.args[0]}") from exc

    def _read_to_end(self, timeout: float) -> None:
        from confluent_kafka import Consumer, TopicPartition

        if self._reader is None:
            self._reader = Consumer(
                {
                    **client_options(self._options),
                    "group.id": f"driftwarden-log-reader-{uuid.uuid4().hex[:12]}",
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "fetch.wait.max.ms": 10,
                }
            )
            meta = self._reader.list_topics(self.name, timeout=10).topics.get(self.name)
            parts = sorted(meta.partitions) if meta is not None and meta.partitions else [0]
            self._reader.assign([TopicPartition(self.name, p, 0) for p in parts])
            self._positions = dict.fromkeys(parts, 0)
        deadline = time.monotonic() + timeout
        ends = {}
        for p in self._positions:
            _, high = self._reader.get_watermark_offsets(TopicPartition(self.name, p), timeout=10)
            ends[p] = high
        while any(self._positions[p] < ends[p] for p in ends):
            if time.monotonic() > deadline:
                raise DriftwardenError(f"could not read the topic {self.name} to its end")
            for msg in self._reader.consume(1000, 0.05):
                if msg.error() is not None:
                    continue
                self._positions[msg.partition()] = msg.offset() + 1
                key = msg.key().decode() if msg.key() else ""
                if msg.value() is None:
                    self.records.pop(key, None)
                else:
                    self.records[key] = msg.value()

    def close(self) -> None:
        try:
            self._producer.flush(10)
        finally:
            if self._reader is not None:
                self._reader.close()
                self._reader = None


class MemoryTopic:
    """``KeyedLog`` over a dict shared by its instances: ``flush`` publishes what was
    produced, ``read_to_end`` takes what any instance published."""

    def __init__(self, shared: dict[str, bytes] | None = None) -> None:
        self.name = "memory"
        self.shared: dict[str, bytes] = {} if shared is None else shared
        self.records: dict[str, bytes] = {}
        self._pending: list[tuple[str, bytes]] = []
        self.flushes = 0

    def produce(self, key: str, value: bytes) -> None:
        self.records[key] = value
        self._pending.append((key, value))

    def flush(self, timeout: float = 30.0) -> None:
        self.shared.update(self._pending)
        self._pending.clear()
        self.flushes += 1

    def read_to_end(self, timeout: float = 30.0) -> None:
        self.records.update(self.shared)

    def close(self) -> None:
        self.flush()
