"""The spine against a real Kafka-protocol broker: exact counts, dead letters, offsets."""

from __future__ import annotations

import copy
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from connectors.kafka import KafkaSource
from monitor.config.schema import parse_config
from monitor.dev.synthetic import BAD_KINDS, DEMO_STREAM, FIELD_KINDS, generate_fleet
from monitor.runtime.service import Service
from tests.kafka_utils import create_topics, produce, read_topic

pytestmark = pytest.mark.integration


def _config(bootstrap: str, unique: str, **extra: Any) -> Any:
    stream = copy.deepcopy(DEMO_STREAM) | {"topic": f"iot.{unique}"}
    raw = {
        "kafka": {"bootstrap.servers": bootstrap, "session.timeout.ms": 6000},
        "group": f"dw-{unique}",
        "metrics": {"listen": "127.0.0.1:0"},
        "dead_letter_topic": f"dlq.{unique}",
        "source": {"max_batch_events": 2000, "max_wait": "200ms"},
        "streams": [stream],
        **extra,
    }
    return parse_config(raw, env={})


def test_known_mix_counts_dead_letters_and_offsets_exactly(
    kafka_bootstrap: str, unique: str
) -> None:
    events = generate_fleet(12_000, seed=5, bad_rate=0.04)
    topic = f"iot.{unique}"
    create_topics(kafka_bootstrap, {topic: 3, f"dlq.{unique}": 1})
    per_partition = produce(kafka_bootstrap, topic, events.values, events.keys)
    total = len(events.values)
    expected = events.counts()
    good = expected.pop("good")
    assert set(expected) == set(BAD_KINDS)

    config = _config(kafka_bootstrap, unique)
    registry = CollectorRegistry()
    service = Service(config, registry=registry)
    host, port = service.metrics_address or ("", 0)
    seen: dict[str, Any] = {}

    def until(stats: Any) -> bool:
        if "readyz" not in seen and stats.events:
            with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=5) as r:
                seen["readyz"] = r.status
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
                seen["metrics"] = r.read().decode()
        return bool(stats.events >= total)

    stats = service.run(max_seconds=90, until=until)
    assert stats.events == total
    # Events with one bad value are accepted (that value excluded) and dead-lettered.
    assert (
        stats.accepted == events.accepted() == good + sum(expected.get(k, 0) for k in FIELD_KINDS)
    )
    assert stats.accepted + stats.invalid == total

    def sample(name: str, **labels: str) -> float:
        value = registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    assert sample("driftwarden_events_total", stream="sensors", topic=topic) == total
    for reason, count in expected.items():
        assert (
            sample("driftwarden_invalid_events_total", stream="sensors", reason=reason) == count
        ), reason
    assert sample("driftwarden_dead_letters_total", stream="sensors") == sum(expected.values())
    assert seen["readyz"] == 200
    assert "driftwarden_events_total" in seen["metrics"]
    assert sample("driftwarden_entities", stream="sensors") == 100

    # The dead-letter topic holds exactly the bad events, each with its reason and coordinates.
    dead = read_topic(kafka_bootstrap, f"dlq.{unique}", sum(expected.values()))
    assert len(dead) == sum(expected.values())
    by_reason: dict[str, int] = {}
    originals = {v for v, r in zip(events.values, events.expected, strict=True) if r is not None}
    for msg in dead:
        headers = {k: v for k, v in msg.headers() or []}
        reason = headers["driftwarden.reason"].decode()
        by_reason[reason] = by_reason.get(reason, 0) + 1
        assert headers["driftwarden.topic"].decode() == topic
        assert int(headers["driftwarden.offset"]) >= 0
        assert headers["driftwarden.detail"]
        assert msg.value() in originals
    assert by_reason == expected

    # Every partition's committed offset equals what was produced to it.
    check = KafkaSource({"bootstrap.servers": kafka_bootstrap}, f"dw-{unique}", [topic])
    try:
        committed = check.committed([(topic, p) for p in per_partition])
    finally:
        check.close()
    assert committed == {(topic, p): n for p, n in per_partition.items()}


def test_readyz_is_not_ready_before_assignment(kafka_bootstrap: str, unique: str) -> None:
    create_topics(kafka_bootstrap, {f"iot.{unique}": 1})
    service = Service(_config(kafka_bootstrap, unique), registry=CollectorRegistry())
    assert service.server is not None
    service.server.start()
    try:
        host, port = service.server.address
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=5)
        assert info.value.code == 503
        info.value.close()
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as r:
            assert r.status == 200
    finally:
        service.close()
