"""The direct fetch path (``source.fetch: direct``) reads exactly what librdkafka reads:
every codec, keys, tombstones, timestamps, big records; across a rebalance between
two members, a frozen broker, dropped connections and TLS.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from connectors.embedded import EmbeddedBroker
from connectors.fetch import DirectFetcher
from connectors.kafka import KafkaSource, ensure_topics
from tests.integration.test_kafka_security import make_certificate
from tests.kafka_auth_proxy import fronted_broker
from tests.kafka_utils import create_topics, produce_waiting

pytestmark = pytest.mark.integration

Record = tuple[bytes | None, bytes | None, int]  # key, value, timestamp (ms)
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")


def _records(n: int, seed: int = 3) -> list[tuple[bytes | None, bytes | None]]:
    """Keys and values of every shape: null keys, tombstones, empty, binary, large."""
    out: list[tuple[bytes | None, bytes | None]] = []
    for i in range(n):
        key = None if i % 5 == 0 else b"k%d" % (i % 37)
        if i % 7 == 0:
            value: bytes | None = None
        elif i % 11 == 0:
            value = b""
        elif i % 13 == 0:
            value = bytes((i * 7 + j * seed) % 256 for j in range(300))
        elif i % 401 == 0:
            value = b'{"blob":"' + b"x" * 400_000 + b'"}'
        else:
            value = b'{"i":%d,"v":%d.25}' % (i, i * seed)
        out.append((key, value))
    return out


def _produce(bootstrap: str, topic: str, n: int, options: dict[str, Any] | None = None) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": 2_000_000}
        | (options or {})
    )
    for i, (key, value) in enumerate(_records(n)):
        stamp = 1_700_000_000_000 + i * 3 if i % 3 else 0  # 0: the producer stamps it
        produce_waiting(producer, topic, value=value, key=key, timestamp=stamp)
    assert producer.flush(30) == 0


def _drain(
    source: KafkaSource, total: int, seconds: float = 60.0
) -> dict[tuple[str, int, int], Record]:
    """(topic, partition, offset) -> record, polling until ``total`` arrived; no record
    twice."""
    out: dict[tuple[str, int, int], Record] = {}
    deadline = time.monotonic() + seconds
    while len(out) < total and time.monotonic() < deadline:
        for batch in source.poll():
            for i in range(len(batch)):
                where = (batch.topic, int(batch.partitions[i]), int(batch.offsets[i]))
                assert where not in out, f"{where} read twice"
                out[where] = (batch.keys[i], batch.values[i], int(batch.timestamps[i]))
    return out


def _options(bootstrap: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "session.timeout.ms": 6000,
        "auto.offset.reset": "earliest",
    }


def test_direct_fetch_reads_what_librdkafka_reads(kafka_bootstrap: str, unique: str) -> None:
    """One topic per codec, one member per path subscribed to all five (one group join)."""
    n = 3_000
    topics = [f"direct.{codec}.{unique}" for codec in CODECS]
    create_topics(kafka_bootstrap, dict.fromkeys(topics, 3), {"max.message.bytes": "2097152"})
    for codec, topic in zip(CODECS, topics, strict=True):
        _produce(kafka_bootstrap, topic, n, {"compression.type": codec})
    got = {}
    for fetch in ("librdkafka", "direct"):
        source = KafkaSource(_options(kafka_bootstrap), f"g-{fetch}-{unique}", topics, fetch=fetch)
        try:
            got[fetch] = _drain(source, n * len(topics))
            status = source.fetch_status()
        finally:
            source.close()
        if fetch == "librdkafka":
            assert status is None  # librdkafka's queue is its own
        else:  # everything fetched was taken; a partition fetched again counts again
            assert status is not None and status.queued_bytes == 0 and status.requests > 0
            taken = sum(len(v) for _, v, _ in got[fetch].values() if v is not None)
            assert status.fetched_bytes >= taken
    assert len(got["librdkafka"]) == n * len(topics)
    assert got["direct"] == got["librdkafka"]
    for topic in topics:
        values = [v for (t, _, _), (_, v, _) in got["direct"].items() if t == topic]
        assert values.count(None) == len([1 for _, v in _records(n) if v is None])


def test_two_direct_members_hand_partitions_over_exactly(kafka_bootstrap: str, unique: str) -> None:
    """A second member joins mid-stream (cooperative rebalance); each commits after
    every poll: together they read every record once."""
    topic, n = f"direct.group.{unique}", 12_000
    create_topics(kafka_bootstrap, {topic: 4})
    _produce(kafka_bootstrap, topic, n)
    options = _options(kafka_bootstrap) | {"partition.assignment.strategy": "cooperative-sticky"}
    group = f"g-{unique}"
    seen: dict[tuple[int, int], str] = {}

    def poll(name: str, source: KafkaSource) -> None:
        for batch in source.poll():
            nxt: dict[tuple[str, int], int] = {}
            for p, o in zip(batch.partitions.tolist(), batch.offsets.tolist(), strict=True):
                assert (p, o) not in seen, f"{(p, o)} read by {seen.get((p, o))} and {name}"
                seen[(p, o)] = name
                nxt[(topic, p)] = max(nxt.get((topic, p), 0), o + 1)
            source.commit(nxt)

    a = KafkaSource(options, group, [topic], max_batch_events=100, max_wait=0.1, fetch="direct")
    b: KafkaSource | None = None
    try:
        deadline = time.monotonic() + 90
        while len(seen) < n and time.monotonic() < deadline:
            poll("a", a)
            if b is None and len(seen) >= 1_000:
                b = KafkaSource(
                    options, group, [topic], max_batch_events=100, max_wait=0.1, fetch="direct"
                )
            if b is not None:
                poll("b", b)
            time.sleep(0.05)  # ~2,000 records/s: the join (a few seconds) comes mid-stream
        assert len(seen) == n
        assert set(seen.values()) == {"a", "b"}, "the second member took partitions over"
    finally:
        a.close()
        if b is not None:
            b.close()


def test_a_frozen_broker_and_dropped_connections_lose_nothing(unique: str) -> None:
    """SIGSTOP/SIGCONT of the broker and connections cut under the fetcher: it reports
    the failures, reconnects and goes on from where it was, each record once."""
    with EmbeddedBroker() as broker:
        topic = f"direct.outage.{unique}"
        create_topics(broker.bootstrap, {topic: 2})
        _produce(broker.bootstrap, topic, 2_000)
        errors: list[str] = []
        fetcher = DirectFetcher(
            {"bootstrap.servers": broker.bootstrap},
            on_error=lambda name, fatal: errors.append(name),
            max_wait=0.1,
            timeout=3.0,
        )
        seen: list[tuple[int, int]] = []

        def take(until: int, seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while len(seen) < until and time.monotonic() < deadline:
                for (_, p), cols in fetcher.take(500, 0.2):
                    seen.extend((p, int(o)) for o in cols.offsets)

        try:
            fetcher.assign({(topic, 0): None, (topic, 1): None})
            take(1_000, 30)
            broker.pause()
            time.sleep(4.0)  # longer than the fetcher's socket timeout
            broker.resume()
            for conn in list(fetcher._conns.values()):  # cut the connection under it
                conn.interrupt()
            _produce(broker.bootstrap, topic, 2_000)
            take(4_000, 60)
        finally:
            fetcher.close()
        assert len(seen) == len(set(seen)) == 4_000
        for p in (0, 1):
            offsets = [o for q, o in seen if q == p]
            assert offsets == list(range(len(offsets))), "in order, no gap"
        assert "_TRANSPORT" in errors


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The embedded broker behind a TLS-terminating front (no SASL): (bootstrap, CA)."""
    cert, key = make_certificate(tmp_path_factory.mktemp("tls"))
    with fronted_broker(cert, key) as proxy:
        time.sleep(1.0)
        yield f"127.0.0.1:{proxy.port}", cert


def test_direct_fetch_over_tls(tls_broker: tuple[str, Path], unique: str) -> None:
    bootstrap, ca = tls_broker
    options = _options(bootstrap) | {"security.protocol": "SSL", "ssl.ca.location": str(ca)}
    topic, n = f"direct.tls.{unique}", 1_000
    _produce(bootstrap, topic, n, {"security.protocol": "SSL", "ssl.ca.location": str(ca)})
    source = KafkaSource(options, f"g-{unique}", [topic], fetch="direct")
    try:
        got = _drain(source, n, seconds=45)
    finally:
        source.close()
    assert len(got) == n
    for p in {p for _, p, _ in got}:
        offsets = sorted(o for _, q, o in got if q == p)
        assert offsets == list(range(len(offsets)))


def test_a_partition_assigned_before_its_topic_exists_is_read(
    kafka_bootstrap: str, unique: str
) -> None:
    """Assigned before its topic exists (metadata is asked again every second while a
    partition has no leader; this broker creates the topic on the metadata request)."""
    topic = f"direct.later.{unique}"
    fetcher = DirectFetcher({"bootstrap.servers": kafka_bootstrap}, max_wait=0.1)
    offsets: list[int] = []
    try:
        fetcher.assign({(topic, 0): 0})
        time.sleep(1.5)
        ensure_topics({"bootstrap.servers": kafka_bootstrap}, [topic], partitions=1)
        producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
        for i in range(500):
            producer.produce(topic, value=b'{"i":%d}' % i, partition=0)
        assert producer.flush(30) == 0
        deadline = time.monotonic() + 20
        while len(offsets) < 500 and time.monotonic() < deadline:
            for _, cols in fetcher.take(1_000, 0.2):
                offsets.extend(int(o) for o in cols.offsets)
    finally:
        fetcher.close()
    assert offsets == list(range(500))


def test_a_backlog_is_read_with_two_requests_out_and_a_live_tail_with_one(
    kafka_bootstrap: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading a backlog, a second fetch request is out while the first response is
    read (for other partitions: each partition in order, once); caught up, one
    request asks for all (none waits behind the broker's long poll)."""
    from connectors import fetch as fetch_module

    topic = f"direct.pipelined.{unique}"
    create_topics(kafka_bootstrap, {topic: 4})
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    n = 8_000
    for i in range(n):
        value = b'{"i":%d,"pad":"%s"}' % (i, b"x" * 2_000)
        produce_waiting(producer, topic, value=value, partition=i % 4)  # a backlog in each
    assert producer.flush(30) == 0
    out: list[int] = []
    original = fetch_module._Connection.send

    def send(self: Any, api: int, version: int, body: bytes) -> None:
        original(self, api, version, body)
        if api == 1:
            out.append(len(self.pending))

    monkeypatch.setattr(fetch_module._Connection, "send", send)
    # 16 MB of records: more than a response holds (the embedded broker answers ~1.5
    # MB per partition), so the backlog takes several requests.
    fetcher = DirectFetcher(
        {"bootstrap.servers": kafka_bootstrap, "max.partition.fetch.bytes": 262_144},
        max_wait=0.5,
    )
    offsets: dict[int, list[int]] = {p: [] for p in range(4)}
    try:
        fetcher.assign({(topic, p): 0 for p in range(4)})
        deadline = time.monotonic() + 60
        while sum(map(len, offsets.values())) < n and time.monotonic() < deadline:
            for (_, partition), cols in fetcher.take(1_000, 0.2):
                offsets[partition].extend(int(o) for o in cols.offsets)
        assert sum(map(len, offsets.values())) == n
        for got in offsets.values():
            assert got == list(range(len(got)))  # in order, once
        assert max(out) == 2, out  # a second request was out while reading the backlog
        out.clear()
        time.sleep(1.6)  # caught up: long polls of max_wait (0.5 s) each
        assert out and max(out) == 1, out
        produce_waiting(producer, topic, value=b'{"i":-1}', partition=2)
        assert producer.flush(30) == 0
        late: list[int] = []
        deadline = time.monotonic() + 10
        while not late and time.monotonic() < deadline:
            for (_, partition), cols in fetcher.take(10, 0.2):
                late.extend(int(o) for o in cols.offsets)
                assert partition == 2
        assert late == [len(offsets[2])]
    finally:
        fetcher.close()


def test_a_partition_waiting_for_the_caller_is_not_held_behind_a_long_poll(
    kafka_bootstrap: str, unique: str
) -> None:
    """One partition has a backlog the caller takes slowly (its fetched records fill
    its share of the queue), the other is caught up: the caught-up one's long poll
    must not keep the backlog waiting a whole ``max_wait`` each time its share fills."""
    topic = f"direct.held.{unique}"
    create_topics(kafka_bootstrap, {topic: 2})
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    n = 12_000
    for i in range(n):
        produce_waiting(
            producer, topic, value=b'{"i":%d,"pad":"%s"}' % (i, b"x" * 1_000), partition=0
        )
    produce_waiting(producer, topic, value=b'{"i":-1}', partition=1)
    assert producer.flush(30) == 0
    # max_wait 0.5 s; 1 MB fetched ahead at most: 512 KB per partition, ~500 records.
    fetcher = DirectFetcher(
        {"bootstrap.servers": kafka_bootstrap}, max_wait=1.0, max_queued_bytes=1 << 20
    )
    got: list[int] = []
    gaps: list[float] = []
    try:
        fetcher.assign({(topic, 0): 0, (topic, 1): 0})
        started = last = time.monotonic()
        while len(got) < n and time.monotonic() - started < 60:
            for (_, partition), cols in fetcher.take(200, 0.05):
                if partition == 0:
                    got.extend(int(o) for o in cols.offsets)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now
            time.sleep(0.002)  # a caller slower than the fetch
        elapsed = time.monotonic() - started
    finally:
        fetcher.close()
    assert got == list(range(n))
    assert max(gaps[1:]) < 0.3, sorted(gaps)[-5:]  # never a whole long poll
    assert elapsed < 15
