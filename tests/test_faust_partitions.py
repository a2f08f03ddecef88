"""The Faust adapter sizes stream windows by the topic's partition count."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import numpy as np
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


def test_a_model_streams_label_topic_joins_through_the_adapter(tmp_path: Any) -> None:
    """The adapter runs every registered stage: a model stream's inference and label
    topics (each fed by its own agent) join as in the native runner."""
    from monitor.dev.model_synthetic import MODEL_STREAM, generate_model_events, reference_rows
    from monitor.pipeline.model import ModelStage

    ref = tmp_path / "ref.jsonl"
    ref.write_bytes(b"\n".join(reference_rows(3000, seed=5)) + b"\n")
    stream = copy.deepcopy(MODEL_STREAM)
    stream["model"]["reference"] = {"file": str(ref)}
    config = parse_config(
        {
            "kafka": {"bootstrap.servers": "127.0.0.1:1"},
            "metrics": {"enabled": False},
            "dead_letter_topic": "dlq",
            "streams": [stream],
        },
        env={},
    )
    monitor = FaustMonitor(config, registry=CollectorRegistry(), sink=MemorySink(), partitions={})
    events = generate_model_events(2000, seed=4)
    inference = [(0, i, None, v) for i, v in enumerate(events.inference)]
    labels = [(0, i, None, v) for i, v in enumerate(events.labels[:1000])]
    first = asyncio.run(monitor.process("ml.loans.inference", inference))
    second = asyncio.run(monitor.process("ml.loans.labels", labels))
    assert first.accepted == 2000 and second.events == 1000
    (model,) = [
        s for s in monitor.pipelines["ml.loans.inference"].stages if isinstance(s, ModelStage)
    ]
    counts = model.join_counts()
    assert counts["joined"] == 992 and counts["duplicate_labels"] == 8  # 1,000 labels
    # the same as the native pipeline on the same batches
    from connectors.kafka import RawBatch
    from monitor.metrics import Metrics
    from monitor.pipeline.stream import build_pipelines

    native = build_pipelines(config, Metrics(CollectorRegistry()))["ml.loans.inference"]
    for topic, values in (
        ("ml.loans.inference", events.inference),
        ("ml.loans.labels", events.labels[:1000]),
    ):
        n = len(values)
        native.process(
            RawBatch(topic, values, np.zeros(n, np.int32), np.arange(n), [None] * n, [-1] * n)
        )
    (again,) = [s for s in native.stages if isinstance(s, ModelStage)]
    assert again.join_counts() == counts


class _AgentApp(_App):
    """Records the agents ``attach`` declares."""

    def __init__(self) -> None:
        super().__init__({})
        self.agents: list[str] = []

    def topic(self, name: str, **kw: Any) -> str:
        return name

    def agent(self, topic: str, name: str) -> Any:
        self.agents.append(topic)
        return lambda fn: fn

    def task(self, fn: Any) -> Any:
        return fn


def test_attach_reads_a_model_streams_label_and_deploy_topics_too(tmp_path: Any) -> None:
    from monitor.dev.model_synthetic import MODEL_STREAM, reference_rows
    from monitor.runtime.faust import attach

    ref = tmp_path / "ref.jsonl"
    ref.write_bytes(b"\n".join(reference_rows(1000, seed=5)) + b"\n")
    stream = copy.deepcopy(MODEL_STREAM)
    stream["model"]["reference"] = {"file": str(ref)}
    stream["model"]["deploy_topic"] = "ml.loans.deploys"
    config = parse_config(
        {"kafka": {"bootstrap.servers": "127.0.0.1:1"}, "streams": [stream]}, env={}
    )
    app = _AgentApp()
    attach(app, config, "ml.loans.inference", registry=CollectorRegistry(), sink=MemorySink())
    assert app.agents == ["ml.loans.inference", "ml.loans.labels", "ml.loans.deploys"]
