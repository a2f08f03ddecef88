"""The Faust adapter sizes stream windows by the topic's partition count."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from prometheus_client import CollectorRegistry

from connectors.base import MemorySink
from monitor.config.schema import parse_config
from monitor.dev.synthetic import DEMO_STREAM, generate_fleet
from monitor.pipeline.drift import DriftStage
from monitor.runtime.faust import FaustMonitor

TOPIC = "iot.faust.sized"


class _Consumer:
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def topic_partitions(self, topic: str) -> int | None:
        return self.counts.get(topic)


class _App:
    def __init__(self, counts: dict[str, int]) -> None:
        self.consumer = _Consumer(counts)


def _monitor(**kw: Any) -> FaustMonitor:
    config = parse_config(
        {
            "kafka": {"bootstrap.servers": "127.0.0.1:1"},
            "metrics": {"enabled": False},
            "dead_letter_topic": "dlq",
            "streams": [copy.deepcopy(DEMO_STREAM) | {"topic": TOPIC}],
        },
        env={},
    )
    return FaustMonitor(config, registry=CollectorRegistry(), sink=MemorySink(), **kw)


def _drift(monitor: FaustMonitor) -> DriftStage:
    (stage,) = [s for s in monitor.pipelines[TOPIC].stages if isinstance(s, DriftStage)]
    return stage


def _rows(n: int) -> list[tuple[int, int, bytes | None, bytes]]:
    fleet = generate_fleet(n, seed=1, bad_rate=0.0)
    return [
        (i % 4, i // 4, k, v) for i, (k, v) in enumerate(zip(fleet.keys, fleet.values, strict=True))
    ]


def test_the_partition_count_comes_from_the_apps_consumer() -> None:
    monitor = _monitor(app=_App({TOPIC: 4}))
    assert _drift(monitor).partition_count == 1
    asyncio.run(monitor.process(TOPIC, _rows(100)))
    assert _drift(monitor).partition_count == 4


def test_a_given_partition_count_wins_and_unknown_metadata_waits() -> None:
    given = _monitor(app=_App({TOPIC: 4}), partitions={TOPIC: 12})
    asyncio.run(given.process(TOPIC, _rows(100)))
    assert _drift(given).partition_count == 12
    unknown = _monitor(app=_App({}))
    asyncio.run(unknown.process(TOPIC, _rows(100)))
    assert _drift(unknown).partition_count == 1  # asked again with the next batch
    unknown.app.consumer.counts[TOPIC] = 3
    asyncio.run(unknown.process(TOPIC, _rows(100)))
    assert _drift(unknown).partition_count == 3
