"""The Faust adapter against a real Kafka-protocol broker: exact counts and dead letters.

A Faust app runs in-process (``app.start()`` on a fresh event loop) with the
settings the embedded broker needs (session timeout 6 s, heartbeat 1 s), the
adapter's agent from ``attach``, and a known mix from ``generate_fleet``.
"""

from __future__ import annotations

import asyncio
import copy
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from connectors.base import MemorySink
from connectors.kafka import KafkaSource
from monitor.config.schema import parse_config
from monitor.dev.synthetic import BAD_KINDS, DEMO_STREAM, FIELD_KINDS, generate_fleet
from monitor.errors import SinkError
from tests.kafka_utils import create_topics, produce, read_topic

faust = pytest.importorskip("faust")

# No warning filters needed: faust-streaming 0.15.3 and aiokafka run clean under -W error.
pytestmark = pytest.mark.integration


def _config(bootstrap: str, topic: str, dlq: str) -> Any:
    return parse_config(
        {
            "kafka": {"bootstrap.servers": bootstrap},
            "metrics": {"listen": "127.0.0.1:0"},
            "dead_letter_topic": dlq,
            "streams": [copy.deepcopy(DEMO_STREAM) | {"topic": topic}],
        },
        env={},
    )


def _app(bootstrap: str, unique: str, datadir: Path) -> Any:
    return faust.App(
        f"dw-faust-{unique}",
        broker=f"kafka://{bootstrap}",
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        datadir=str(datadir),
        store="memory://",
        web_enabled=False,
        topic_partitions=1,
        consumer_auto_offset_reset="earliest",
    )


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_faust_adapter_counts_and_dead_letters_exactly(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    from monitor.runtime.faust import attach

    events = generate_fleet(3_000, seed=11, bad_rate=0.05)
    topic, dlq = f"iot.faust.{unique}", f"dlq.faust.{unique}"
    create_topics(kafka_bootstrap, {topic: 2, dlq: 1})
    per_partition = produce(kafka_bootstrap, topic, events.values, events.keys)
    total = len(events.values)
    expected = events.counts()
    good = expected.pop("good")
    assert set(expected) == set(BAD_KINDS)
    bad = sum(expected.values())

    config = _config(kafka_bootstrap, topic, dlq)
    registry = CollectorRegistry()
    app = _app(kafka_bootstrap, unique, tmp_path)
    monitor = attach(app, config, topic, batch_size=500, within=0.2, registry=registry)

    async def run() -> float:
        await app.start()
        try:
            deadline = time.monotonic() + 45
            while monitor.stats.events < total and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            # /metrics is served by the attached task while the worker runs.
            server = monitor.server
            assert server is not None
            host, port = server.address
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
            body = await reader.read()
            writer.close()
            await writer.wait_closed()
            assert b"driftwarden_events_total" in body
            return time.monotonic()
        finally:
            await app.stop()

    started = time.monotonic()
    asyncio.run(asyncio.wait_for(run(), 60))
    assert time.monotonic() - started < 60
    monitor.close()

    assert monitor.stats.events == total
    # Events with one bad value are accepted (that value excluded) and dead-lettered.
    assert monitor.stats.accepted == events.accepted()
    assert monitor.stats.accepted == good + sum(expected.get(k, 0) for k in FIELD_KINDS)
    assert monitor.stats.rejected == {k: v for k, v in expected.items() if k not in FIELD_KINDS}
    assert monitor.stats.violated == {k: v for k, v in expected.items() if k in FIELD_KINDS}
    assert monitor.stats.failures == 0
    assert _sample(registry, "driftwarden_events_total", stream="sensors", topic=topic) == total
    for reason, count in expected.items():
        assert (
            _sample(registry, "driftwarden_invalid_events_total", stream="sensors", reason=reason)
            == count
        ), reason
    assert _sample(registry, "driftwarden_dead_letters_total", stream="sensors") == bad
    assert _sample(registry, "driftwarden_entities", stream="sensors") == 100
    # Good = consumed - dead-lettered, per the metrics.
    invalid = sum(
        _sample(registry, "driftwarden_invalid_events_total", stream="sensors", reason=r)
        for r in BAD_KINDS
    )
    assert total - invalid == good

    dead = read_topic(kafka_bootstrap, dlq, bad, timeout=20)
    assert len(dead) == bad
    originals = {v for v, r in zip(events.values, events.expected, strict=True) if r is not None}
    by_reason: dict[str, int] = {}
    for msg in dead:
        headers = dict(msg.headers() or [])
        reason = headers["driftwarden.reason"].decode()
        by_reason[reason] = by_reason.get(reason, 0) + 1
        assert headers["driftwarden.topic"].decode() == topic
        assert int(headers["driftwarden.offset"]) >= 0
        assert int(headers["driftwarden.timestamp"]) > 0
        assert msg.value() in originals
        assert msg.key() is not None and msg.key().startswith(b"dev-")
    assert by_reason == expected

    # Faust committed (on stop at the latest) exactly what was processed.
    check = KafkaSource({"bootstrap.servers": kafka_bootstrap}, f"dw-faust-{unique}", [topic])
    try:
        committed = check.committed([(topic, p) for p in per_partition])
    finally:
        check.close()
    assert committed == {(topic, p): n for p, n in per_partition.items()}


class _Consumer:
    """Records what reaches ``Consumer.ack`` (what Faust would commit)."""

    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, message: Any) -> bool:
        self.acked.append(message.offset)
        return True


class _Event:
    """What ``take_events`` yields, minus the app: a message and ``ack``."""

    def __init__(self, message: Any, consumer: _Consumer) -> None:
        self.message = message
        self.consumer = consumer

    def ack(self) -> bool:
        return bool(self.message.ack(self.consumer))


class _FailingSink(MemorySink):
    def flush(self, timeout: float) -> int:
        raise SinkError("broker said no")


def _events(values: list[bytes], keys: list[bytes], topic: str, c: _Consumer) -> list[_Event]:
    from faust.types.tuples import ConsumerMessage

    out = []
    for i, (value, key) in enumerate(zip(values, keys, strict=True)):
        message = ConsumerMessage(topic, 0, i, 1_790_000_000.5, 0, None, key, value, None)
        message.incref()  # the reference the stream holds until take_events acks
        out.append(_Event(message, c))
    return out


def test_failed_delivery_is_never_acked_to_the_consumer() -> None:
    from monitor.runtime.faust import FaustMonitor

    topic = "iot.faust.unit"
    fleet = generate_fleet(200, seed=3, bad_rate=0.2)
    config = _config("127.0.0.1:1", topic, "dlq.unit")

    # Delivered: take_events' ack then reaches the consumer for every message.
    consumer = _Consumer()
    sink = MemorySink()
    ok = FaustMonitor(config, registry=CollectorRegistry(), sink=sink, drift=False)
    events = _events(fleet.values, fleet.keys, topic, consumer)
    result = asyncio.run(ok.process(topic, events))
    for e in events:
        e.ack()
    assert consumer.acked == list(range(200))
    assert result.next_offsets == {(topic, 0): 200}
    bad = [m for m in sink.messages if m.topic == "dlq.unit"]
    assert len(bad) == sum(r is not None for r in fleet.expected)
    headers = dict(bad[0].headers)
    assert headers["driftwarden.timestamp"] == b"1790000000500"
    assert bad[0].key is not None and bad[0].key.startswith(b"dev-")

    # Not delivered: take_events still acks (its finally), but nothing reaches the
    # consumer, and the messages no longer count as in flight (a stop does not wait).
    consumer = _Consumer()
    failing = FaustMonitor(config, registry=CollectorRegistry(), sink=_FailingSink(), drift=False)
    events = _events(fleet.values, fleet.keys, topic, consumer)
    with pytest.raises(SinkError):
        asyncio.run(failing.process(topic, events))
    for e in events:
        e.ack()
    assert consumer.acked == []
    assert all(e.message.acked for e in events)
    assert failing.stats.failures == 1 and not failing.ready()

    # Plain tuples work too (no acks to manage).
    rows = [
        (1, 10 + i, k, v, 1_790_000_000_000)
        for i, (k, v) in enumerate(zip(fleet.keys, fleet.values, strict=True))
    ]
    tuples = FaustMonitor(config, registry=CollectorRegistry(), sink=MemorySink(), drift=False)
    result = asyncio.run(tuples.process(topic, rows))
    assert result.next_offsets == {(topic, 1): 210}
    assert result.accepted == fleet.accepted()
