"""Read a topic from a position, outside any consumer group's committed offsets.

Used by ``driftwarden tail`` to show the dead-letter, alerts and retrain topics.
Nothing is committed: the reader assigns partitions directly.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

__all__ = ["Record", "read_time_range", "read_topic"]

_OFFSET_BEGINNING = -2
_OFFSET_END = -1


@dataclass(frozen=True, slots=True)
class Record:
    """One record as read: coordinates, timestamp (ms), key, value and headers."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


def read_topic(
    options: Mapping[str, Any],
    topic: str,
    *,
    from_beginning: bool = True,
    max_records: int | None = None,
    idle_seconds: float = 5.0,
    max_seconds: float | None = None,
) -> Iterator[Record]:
    """Records of every partition of ``topic``; stops after ``idle_seconds`` without
    one (``follow`` by passing a large value), ``max_records`` or ``max_seconds``."""
    consumer = Consumer(
        {
            **options,
            "group.id": f"driftwarden-tail-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            raise KafkaException(f"topic {topic!r} not found")
        start = _OFFSET_BEGINNING if from_beginning else _OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in sorted(meta.partitions)])
        seen = 0
        began = last = time.monotonic()
        while max_records is None or seen < max_records:
            now = time.monotonic()
            if now - last >= idle_seconds or (
                max_seconds is not None and now - began >= max_seconds
            ):
                return
            for msg in consumer.consume(500, 0.5):
                if msg.error() is not None:
                    continue
                last = time.monotonic()
                seen += 1
                _, ts = msg.timestamp()
                raw_headers: Any = msg.headers() or ()  # a list of (name, bytes) pairs
                headers = [(k, v) for k, v in raw_headers if isinstance(v, bytes)]
                yield Record(
                    topic=str(msg.topic()),
                    partition=int(msg.partition() or 0),
                    offset=int(msg.offset() or 0),
                    timestamp_ms=int(ts),
                    key=msg.key(),
                    value=msg.value(),
                    headers=tuple(headers),
                )
                if max_records is not None and seen >= max_records:
                    return
    finally:
        consumer.close()


def read_time_range(
    options: Mapping[str, Any],
    topics: Sequence[str],
    start: float | None,
    end: float | None,
    limit: int | None,
    *,
    idle_seconds: float = 5.0,
) -> Iterator[list[bytes | None]]:
    """Batches of the values of ``topics`` with a timestamp in [``start``, ``end``]
    (seconds since the epoch; None: from the beginning / to the end), at most about
    ``limit`` values; stops once no record came for ``idle_seconds``."""
    consumer = Consumer(
        {
            **options,
            "group.id": f"driftwarden-range-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        parts = []
        for topic in topics:
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            parts += [
                TopicPartition(topic, p, int(start * 1000) if start is not None else 0)
                for p in meta.partitions
            ]
        if start is not None:
            parts = consumer.offsets_for_times(parts, timeout=10)
        consumer.assign(parts)
        idle_deadline = time.monotonic() + 2 * idle_seconds
        seen = 0
        while time.monotonic() < idle_deadline and (limit is None or seen < limit):
            msgs = consumer.consume(10_000, 1.0)
            if not msgs:
                continue
            idle_deadline = time.monotonic() + idle_seconds
            msgs = [m for m in msgs if m.error() is None]
            if end is not None:
                msgs = [m for m in msgs if m.timestamp()[1] <= end * 1000]
            seen += len(msgs)
            yield [m.value() for m in msgs]
    finally:
        consumer.close()
