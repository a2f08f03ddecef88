"""The runner without a broker: in-memory source, sink and state store.

Rebalances, restores, the checkpoint cadence and readiness, each checked against
an uninterrupted run over the same events.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from connectors.base import MemorySink
from connectors.fetch import FetchStatus
from connectors.kafka import RawBatch
from detectors.baseline import save_baseline
from monitor.checkpoints import CheckpointKey, PartitionState
from monitor.config.schema import Config, parse_config
from monitor.dev.synthetic import DEMO_STREAM, generate_fleet
from monitor.metrics import Metrics
from monitor.pipeline.baselines import baseline_from_batches
from monitor.pipeline.stage import registered_stages
from monitor.runtime.runner import Runner
from monitor.runtime.state import MemoryStateStore
from tests.kafka_utils import assert_same

TOPIC = "iot.sensors"
TP = tuple[str, int]


class MemorySource:
    """A ``BatchSource`` over per-partition lists of payloads; rebalances on demand."""

    def __init__(self, data: Mapping[int, list[bytes]], batch: int = 1000) -> None:
        self.data = data
        self.batch = batch
        self.assignment: set[TP] = set()
        self.next: dict[TP, int] = {}
        self.committed: dict[TP, int] = {}
        self.broker_up = True
        self.on_assign: Callable[[list[TP]], Mapping[TP, int]] | None = None
        self.on_revoke: Callable[[list[TP]], None] | None = None
        self.closed = False

    def bind(self, runner: Runner) -> MemorySource:
        self.on_assign = runner.assignment.on_assign
        self.on_revoke = runner.assignment.on_revoke
        return self

    def assign(self, partitions: list[TP]) -> None:
        self.assignment.update(partitions)
        assert self.on_assign is not None
        starts = self.on_assign(partitions)
        for key in partitions:
            self.next[key] = starts.get(key, self.committed.get(key, 0))

    def revoke(self, partitions: list[TP]) -> None:
        assert self.on_revoke is not None
        self.on_revoke(partitions)
        self.assignment.difference_update(partitions)

    def poll(self) -> list[RawBatch]:
        for key in sorted(self.assignment):
            start, values = self.next[key], self.data[key[1]]
            if start < len(values):
                chunk = values[start : start + self.batch]
                self.next[key] = start + len(chunk)
                n = len(chunk)
                return [
                    RawBatch(
                        topic=key[0],
                        values=list(chunk),
                        partitions=np.full(n, key[1], dtype=np.int32),
                        offsets=np.arange(start, start + n, dtype=np.int64),
                        keys=[None] * n,
                        timestamps=np.full(n, -1, dtype=np.int64),
                    )
                ]
        return []

    def commit(self, next_offsets: Mapping[TP, int]) -> None:
        self.committed.update(next_offsets)

    def lag(self, positions: Mapping[TP, int]) -> dict[TP, int]:
        return {k: len(self.data[k[1]]) - positions.get(k, 0) for k in self.assignment}

    def probe(self, timeout: float) -> bool:
        return self.broker_up

    def partition_count(self, topic: str) -> int:
        return len(self.data)

    def close(self) -> None:
        self.closed = True


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[int, list[bytes]], Path]:
    """Two partitions of 12k events each (drift in the second half) and a baseline file."""
    events = generate_fleet(24_000, seed=17, bad_rate=0.01, drift_at=12_000)
    split = {0: events.values[0::2], 1: events.values[1::2]}
    clean = generate_fleet(10_000, seed=18, bad_rate=0.0)
    spec = _config(Path("unused")).streams[0]
    baseline, _, _ = baseline_from_batches(spec, iter([clean.values]), None, "test")
    path = tmp_path_factory.mktemp("baseline") / "baseline.json"
    save_baseline(baseline, path)
    return split, path


def _config(baseline: Path, every_events: int = 3000) -> Config:
    stream = copy.deepcopy(DEMO_STREAM) | {
        "topic": TOPIC,
        "baseline": {"file": str(baseline)},
        "window": {"events": 4000, "step": 1000},
    }
    return parse_config(
        {
            "kafka": {"bootstrap.servers": "127.0.0.1:1"},
            "group": "g",
            "metrics": {"enabled": False},
            "state": {"every_events": every_events, "every_seconds": "1h"},
            "streams": [stream],
        },
        env={},
    )


def _runner(
    config: Config, source: MemorySource, store: MemoryStateStore
) -> tuple[Runner, CollectorRegistry]:
    registry = CollectorRegistry()
    runner = Runner(
        config,
        metrics=Metrics(registry),
        source=source,
        sink=MemorySink(),
        stages=registered_stages,
        state_store=store,
    )
    source.bind(runner)
    return runner, registry


def _drain(runner: Runner, max_steps: int = 1000) -> None:
    for _ in range(max_steps):
        if runner.step() == 0:
            return
    raise AssertionError("the source did not run dry")


def _states(runner: Runner) -> dict[int, PartitionState]:
    (pipeline,) = set(runner.pipelines.values())
    return {p: pipeline.partition_state(t, p) for t, p in sorted(pipeline.partition_events)}


def _reference(data: dict[int, list[bytes]], baseline: Path) -> dict[int, PartitionState]:
    source = MemorySource(data)
    runner, _ = _runner(_config(baseline), source, MemoryStateStore())
    source.assign([(TOPIC, 0), (TOPIC, 1)])
    _drain(runner)
    return _states(runner)


def test_checkpoints_follow_the_configured_cadence(
    data: tuple[dict[int, list[bytes]], Path],
) -> None:
    values, baseline = data
    store = MemoryStateStore()
    source = MemorySource(values)
    runner, _ = _runner(_config(baseline, every_events=3000), source, store)
    source.assign([(TOPIC, 0), (TOPIC, 1)])
    _drain(runner)
    # every_events counts each partition's own events: 12,000 each, so 4 apiece
    assert runner.checkpointer.saved == {(TOPIC, 0): 4, (TOPIC, 1): 4}
    assert 4 <= runner.checkpointer.written <= 8
    runner.close()
    reader = MemoryStateStore(store.shared)
    reader.refresh()
    for p in (0, 1):
        saved = reader.partition(CheckpointKey.for_partition("g", "sensors", TOPIC, p))
        assert saved is not None
        assert saved.offset == len(values[p]) == saved.state.events
    assert source.committed == {(TOPIC, 0): 12_000, (TOPIC, 1): 12_000}


def test_a_restart_from_checkpoints_continues_exactly(
    data: tuple[dict[int, list[bytes]], Path],
) -> None:
    values, baseline = data
    reference = _reference(values, baseline)
    topic: dict[str, bytes] = {}
    first_source = MemorySource({p: v[:5_500] for p, v in values.items()})
    first, _ = _runner(_config(baseline), first_source, MemoryStateStore(topic))
    first_source.assign([(TOPIC, 0), (TOPIC, 1)])
    _drain(first)
    first.final_checkpoint = False  # as a crash: the last 500 events per partition replay
    first.close()
    source = MemorySource(values)
    second, _ = _runner(_config(baseline), source, MemoryStateStore(topic))
    source.assign([(TOPIC, 0), (TOPIC, 1)])
    reader = MemoryStateStore(topic)
    reader.refresh()
    saved = {}
    for p in (0, 1):
        found = reader.partition(CheckpointKey.for_partition("g", "sensors", TOPIC, p))
        assert found is not None
        saved[(TOPIC, p)] = found.offset
    assert source.next == saved  # restored, and seeking to the checkpointed offsets
    assert min(saved.values()) < 5_500  # some events replay
    _drain(second)
    assert_same(_states(second), reference)


def test_a_rebalance_hands_a_partition_over_exactly(
    data: tuple[dict[int, list[bytes]], Path],
) -> None:
    values, baseline = data
    reference = _reference(values, baseline)
    topic: dict[str, bytes] = {}
    source_a, source_b = MemorySource(values), MemorySource(values)
    a, _ = _runner(_config(baseline), source_a, MemoryStateStore(topic))
    b, _ = _runner(_config(baseline), source_b, MemoryStateStore(topic))
    source_a.assign([(TOPIC, 0), (TOPIC, 1)])
    for _ in range(7):  # a reads part of both partitions
        a.step()
    source_a.revoke([(TOPIC, 1)])  # checkpointed on revocation ...
    source_b.assign([(TOPIC, 1)])  # ... and continued by b
    assert a.pipelines[TOPIC].stages[0].judge and not b.pipelines[TOPIC].stages[0].judge
    _drain(a)
    _drain(b)
    assert_same({**_states(a), **_states(b)}, reference)


def test_readiness_follows_assignment_and_broker(
    data: tuple[dict[int, list[bytes]], Path],
) -> None:
    values, baseline = data
    source = MemorySource({p: v[:2000] for p, v in values.items()})
    runner, registry = _runner(_config(baseline), source, MemoryStateStore())
    runner.readiness.probe_interval = 0.0  # probe at every idle poll

    def ready() -> float | None:
        return registry.get_sample_value("driftwarden_ready")

    runner.step()
    assert ready() == 0  # nothing assigned
    source.assign([(TOPIC, 0)])
    runner.step()
    assert ready() == 1
    assert registry.get_sample_value("driftwarden_baseline_ready", {"stream": "sensors"}) == 1
    _drain(runner)
    source.broker_up = False
    runner.step()  # idle: the probe finds no broker
    assert ready() == 0 and not runner.ready()
    source.broker_up = True
    runner.step()
    assert ready() == 1
    runner.close()
    assert ready() == 0 and source.closed


def test_first_events_baseline_is_checkpointed_and_restored(
    data: tuple[dict[int, list[bytes]], Path],
) -> None:
    values, _ = data
    raw: dict[str, Any] = copy.deepcopy(DEMO_STREAM) | {
        "topic": TOPIC,
        "baseline": {"first_events": 3000},
        "window": {"events": 2000, "step": 500},
    }
    config = parse_config({"kafka": {"bootstrap.servers": "127.0.0.1:1"}, "streams": [raw]}, env={})
    topic: dict[str, bytes] = {}
    source = MemorySource({0: values[0][:4000]})
    first, registry = _runner(config, source, MemoryStateStore(topic))
    assert registry.get_sample_value("driftwarden_baseline_ready", {"stream": "sensors"}) == 0
    source.assign([(TOPIC, 0)])
    _drain(first)
    assert registry.get_sample_value("driftwarden_baseline_ready", {"stream": "sensors"}) == 1
    first.close()
    built = first.pipelines[TOPIC].stages[0]
    second_source = MemorySource({0: values[0]})
    second, registry = _runner(config, second_source, MemoryStateStore(topic))
    second_source.assign([(TOPIC, 0)])
    restored = second.pipelines[TOPIC].stages[0]
    assert restored.ready
    assert registry.get_sample_value("driftwarden_baseline_ready", {"stream": "sensors"}) == 1
    assert getattr(restored, "baseline").id == getattr(built, "baseline").id  # noqa: B009


def test_losing_the_first_partition_stops_judging_at_once(
    data: tuple[dict[int, list[bytes]], Path],
) -> None:
    values, baseline = data
    source = MemorySource(values)
    runner, _ = _runner(_config(baseline), source, MemoryStateStore())
    source.assign([(TOPIC, 0), (TOPIC, 1)])
    runner.step()
    (stage,) = runner.pipelines[TOPIC].stages
    assert stage.judge and runner.assignment.judging == {"sensors"}
    source.revoke([(TOPIC, 0)])
    assert not stage.judge and runner.assignment.judging == set()
    source.assign([(TOPIC, 0)])
    assert stage.judge and runner.assignment.judging == {"sensors"}
    runner.close()


class FetchingSource(MemorySource):
    """A source that fetches ahead and reports it (as ``KafkaSource`` does on the
    direct path): queued bytes fall as batches are taken, totals only grow."""

    def __init__(self, data: Mapping[int, list[bytes]]) -> None:
        super().__init__(data)
        self.taken = 0

    def poll(self) -> list[RawBatch]:
        out = super().poll()
        self.taken += sum(len(v) for b in out for v in b.values if v is not None)
        return out

    def fetch_status(self) -> FetchStatus:
        total = sum(len(v) for values in self.data.values() for v in values)
        return FetchStatus(queued_bytes=total - self.taken, requests=7, fetched_bytes=total)


class RestartingFetcher(FetchingSource):
    """Its fetcher starts over halfway (counters back at zero): totals keep growing."""

    def fetch_status(self) -> FetchStatus:
        status = super().fetch_status()
        if self.taken * 2 < status.fetched_bytes:
            return status
        return FetchStatus(status.queued_bytes, 3, self.taken)


def test_the_poll_time_and_the_fetchers_queue_are_metrics(
    data: tuple[dict[int, list[bytes]], Path],
) -> None:
    values, baseline = data
    for source in (MemorySource(values), FetchingSource(values), RestartingFetcher(values)):
        runner, registry = _runner(_config(baseline), source, MemoryStateStore())
        source.assign([(TOPIC, 0), (TOPIC, 1)])
        _drain(runner)
        assert (registry.get_sample_value("driftwarden_poll_seconds_total") or 0.0) > 0.0
        queued = registry.get_sample_value("driftwarden_fetch_queued_bytes")
        requests = registry.get_sample_value("driftwarden_fetch_requests_total")
        fetched = registry.get_sample_value("driftwarden_fetch_bytes_total")
        total = sum(len(v) for vs in values.values() for v in vs)
        if isinstance(source, RestartingFetcher):  # 7 before the restart, 3 after it
            assert queued == 0.0 and requests == 10.0 and fetched is not None
            assert fetched >= total
        elif isinstance(source, FetchingSource):
            assert (queued, requests, fetched) == (0.0, 7.0, float(total))
        else:  # a source that does not fetch ahead leaves them at zero
            assert (queued, requests, fetched) == (0.0, 0.0, 0.0)
        runner.close()
