"""Small Kafka helpers for tests: produce with per-partition counts, read a topic back."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from monitor.dev.producing import produce_waiting

__all__ = ["assert_same", "create_topics", "produce", "produce_waiting", "read_topic"]


def create_topics(
    bootstrap: str, topics: dict[str, int], config: dict[str, str] | None = None
) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(t, n, 1, config=dict(config or {})) for t, n in topics.items()]
    )
    for future in futures.values():
        future.result(10)


def produce(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes | None],
    keys: Sequence[bytes] | None = None,
    options: dict[str, Any] | None = None,
) -> dict[int, int]:
    """Produce in order; return how many messages each partition acknowledged."""
    per_partition: dict[int, int] = {}
    failures: list[str] = []

    def delivered(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failures.append(err.str())
        else:
            per_partition[msg.partition()] = per_partition.get(msg.partition(), 0) + 1

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "enable.idempotence": True,
            **(options or {}),
        }
    )
    for i, value in enumerate(values):
        key = keys[i] if keys is not None else None
        produce_waiting(producer, topic, value=value, key=key, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(30) == 0, "producer did not finish"
    assert not failures, failures[:3]
    return per_partition


def read_topic(
    bootstrap: str, topic: str, expected: int, timeout: float = 30.0, settle: float = 1.0
) -> list[Message]:
    """Read ``topic`` from the start until ``expected`` messages came (then ``settle`` s more)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{topic}-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            if settle_until is not None and time.monotonic() >= settle_until:
                break
            for msg in consumer.consume(1000, 0.2):
                if msg.error() is None:
                    out.append(msg)
            if len(out) >= expected and settle_until is None:
                settle_until = time.monotonic() + settle
    finally:
        consumer.close()
    return out


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Deep equality of checkpoint-shaped values (dicts, lists, numpy arrays, and the
    checkpoint values of monitor.checkpoints, compared by their plain form)."""
    if hasattr(a, "to_plain") or hasattr(b, "to_plain"):
        assert hasattr(a, "to_plain") and hasattr(b, "to_plain"), path
        assert_same(a.to_plain(), b.to_plain(), path)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(np.asarray(a), np.asarray(b)), path
    else:
        assert a == b, path
