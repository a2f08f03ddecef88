"""A dead letter the broker refuses is retried; the commit waits and readiness drops."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from connectors.base import OutMessage
from connectors.kafka import KafkaSink, RawBatch, consumer_limits, producer_limits
from monitor.config.schema import parse_config
from monitor.dev.synthetic import DEMO_STREAM
from monitor.errors import SinkError
from monitor.metrics import Metrics
from monitor.runtime.runner import Runner

TopicPartitionKey = tuple[str, int]


class _Msg:
    def key(self) -> bytes:
        return b"k"

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000)

    def topic(self) -> str:
        return "dlq"

    def value(self) -> bytes:
        return b"{bad"

    def headers(self) -> list[tuple[str, bytes]]:
        return [("driftwarden.reason", b"invalid_json")]


class _Err:
    def str(self) -> str:
        return "Broker: Topic authorization failed"

    def name(self) -> str:
        return "TOPIC_AUTHORIZATION_FAILED"


@dataclass
class _Source:
    batches: list[RawBatch]
    log: list[str]
    assignment: set[TopicPartitionKey] = field(default_factory=lambda: {("iot.sensors", 0)})

    def poll(self) -> list[RawBatch]:
        return [self.batches.pop(0)] if self.batches else []

    def commit(self, next_offsets: Mapping[TopicPartitionKey, int]) -> None:
        self.log.append(f"commit {dict(next_offsets)}")

    def lag(self, positions: Mapping[TopicPartitionKey, int]) -> dict[TopicPartitionKey, int]:
        return {}

    def probe(self, timeout: float) -> bool:
        return True

    def partition_count(self, topic: str) -> int:
        return 1

    def close(self) -> None:
        pass


@dataclass
class _RefusingSink:
    """Acknowledges nothing for ``refusals`` flushes, like a broker that says no."""

    refusals: int
    log: list[str]
    runner: Runner | None = None
    sent: list[OutMessage] = field(default_factory=list)
    ready_seen: list[bool] = field(default_factory=list)

    def send(self, message: OutMessage) -> None:
        self.sent.append(message)

    def flush(self, timeout: float) -> int:
        if self.runner is not None:
            self.ready_seen.append(self.runner.metrics.ready._value.get() == 1)
        if self.refusals > 0:
            self.refusals -= 1
            self.log.append("flush refused")
            return len(self.sent)
        self.log.append("flush ok")
        return 0


def _batch(values: list[bytes]) -> RawBatch:
    n = len(values)
    return RawBatch(
        topic="iot.sensors",
        values=list(values),
        partitions=np.zeros(n, dtype=np.int32),
        offsets=np.arange(n, dtype=np.int64),
        keys=(_keys := [b"k"] * len(values)),
        timestamps=[1_700_000_000_000] * len(_keys),
    )


def _runner(sink: _RefusingSink, source: _Source) -> Runner:
    stream = copy.deepcopy(DEMO_STREAM)
    config = parse_config(
        {"kafka": {"bootstrap.servers": "x:1"}, "streams": [stream], "state": {"enabled": False}},
        env={},
    )
    runner = Runner(config, metrics=Metrics(CollectorRegistry()), source=source, sink=sink)
    sink.runner = runner
    return runner


def test_the_commit_waits_until_the_dead_letters_are_taken() -> None:
    log: list[str] = []
    sink = _RefusingSink(refusals=0, log=log)
    good = b'{"device_id":"d","ts":1,"temperature":1,"humidity":1,"vibration":1,"status":"ok"}'
    runner = _runner(sink, _Source([_batch([good]), _batch([b"{bad", b"[1]"])], log))
    assert runner.step() == 1
    assert runner.metrics.ready._value.get() == 1
    log.clear()
    sink.ready_seen.clear()
    sink.refusals = 3
    assert runner.step() == 2
    assert log == ["flush refused"] * 3 + ["flush ok", "commit {('iot.sensors', 0): 2}"]
    assert len(sink.sent) == 2
    assert sink.ready_seen == [True, False, False, False]  # not ready while refused
    assert runner.metrics.ready._value.get() == 1  # and ready again once taken


def test_a_stop_while_refused_leaves_the_batch_uncommitted() -> None:
    log: list[str] = []
    sink = _RefusingSink(refusals=10**9, log=log)
    runner = _runner(sink, _Source([_batch([b"{bad"])], log))
    runner.stop_event.set()
    with pytest.raises(SinkError):
        runner.step()
    assert not [line for line in log if line.startswith("commit")]


def test_kafka_sink_sends_a_refused_record_again_and_counts_it() -> None:
    failures: list[tuple[str, str]] = []
    sink = KafkaSink(
        {"bootstrap.servers": "127.0.0.1:1", "socket.connection.setup.timeout.ms": 1000},
        retry_failed=True,
        on_failure=lambda topic, reason: failures.append((topic, reason)),
    )
    try:
        sink._delivered(_Err(), _Msg())  # type: ignore[arg-type]
        before = sink.sent
        assert sink.flush(0.05) >= 1  # still owed: the caller keeps waiting
        assert sink.sent == before + 1
        assert failures == [("dlq", "TOPIC_AUTHORIZATION_FAILED")]
    finally:
        sink._producer.purge()  # type: ignore[attr-defined]
    strict = KafkaSink({"bootstrap.servers": "127.0.0.1:1"})
    strict._delivered(_Err(), _Msg())  # type: ignore[arg-type]
    with pytest.raises(SinkError, match="authorization"):
        strict.flush(0.05)
    strict._producer.purge()


@pytest.mark.parametrize("fetch", ["librdkafka", "direct"])
def test_size_settings_are_consistent(fetch: str) -> None:
    producer = producer_limits(900_000)
    consumer = consumer_limits(fetch)
    assert producer["message.max.bytes"] >= 900_000 + 16_384  # value, key and headers fit
    assert consumer["fetch.max.bytes"] >= producer["message.max.bytes"]
    assert consumer["queued.max.messages.kbytes"] * 1024 >= consumer["fetch.max.bytes"]


def test_a_record_over_the_producer_limit_is_a_clear_error() -> None:
    sink = KafkaSink({"bootstrap.servers": "127.0.0.1:1", "message.max.bytes": 2_000})
    try:
        with pytest.raises(SinkError, match=r"message\.max\.bytes"):
            sink.send(OutMessage("dlq", b"x" * 5_000))
    finally:
        sink._producer.purge()
