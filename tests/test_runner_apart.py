"""The drift stage runs apart while the runner reads and decodes the next batch.

Reading a backlog (the direct fetcher has the next records already), the runner
lets the drift stage fold a batch in on a worker thread and meanwhile reads and
decodes the next batch. Everything a user sees must be what the one-after-another
run gives: each partition's state, the checkpoints, the committed offsets, the dead
letters, also across a restart and a rebalance that comes in the read made while a
batch is in flight. The source here is the in-memory one of ``test_runner_memory``
that says, like the direct fetcher, how much it holds fetched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from connectors.base import MemorySink
from connectors.fetch import FetchStatus
from connectors.kafka import RawBatch
from monitor.checkpoints import CheckpointKey
from monitor.pipeline.drift import DriftStage
from monitor.runtime.runner import Runner
from monitor.runtime.state import MemoryStateStore
from tests.kafka_utils import assert_same
from tests.test_runner_memory import (
    TOPIC,
    MemorySource,
    _config,
    _drain,
    _reference,
    _runner,
    _states,
    data,
)

__all__ = ["data"]  # the fixture, shared with test_runner_memory

TP = tuple[str, int]


class FetchingSource(MemorySource):
    """``MemorySource`` that reports a backlog as the direct fetcher does
    (``fetch_status``); ``rebalance_at``: on that poll, a rebalance comes first (as
    librdkafka runs the callbacks inside the consumer's poll)."""

    def __init__(
        self,
        data: Mapping[int, list[bytes]],
        rebalance_at: int | None = None,
        then: Any = None,
    ) -> None:
        super().__init__(data)
        self.polls = 0
        self.rebalance_at = rebalance_at
        self.then = then

    def fetch_status(self) -> FetchStatus:
        left = sum(len(self.data[k[1]]) - self.next.get(k, 0) for k in self.assignment)
        return FetchStatus(queued_bytes=max(left, 0), requests=0, fetched_bytes=0)

    def poll(self) -> list[RawBatch]:
        self.polls += 1
        if self.polls == self.rebalance_at and self.then is not None:
            self.then()
        return super().poll()


def _threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads the drift stage's updates run on."""
    seen: list[str] = []
    update = DriftStage.update

    def spy(self: DriftStage, *args: Any, **kwargs: Any) -> Any:
        seen.append(threading.current_thread().name)
        return update(self, *args, **kwargs)

    monkeypatch.setattr(DriftStage, "update", spy)
    return seen


def _letters(runner: Runner) -> list[tuple[str, bytes | None]]:
    """What the runner sent (dead letters: these runs have no alert handler)."""
    sink = runner.sink
    assert isinstance(sink, MemorySink)
    return [(m.topic, m.value) for m in sink.messages]


def test_apart_gives_what_one_after_another_gives(
    data: tuple[dict[int, list[bytes]], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    values, baseline = data
    reference_source = MemorySource(values)
    reference, reference_registry = _runner(_config(baseline), reference_source, MemoryStateStore())
    reference_source.assign([(TOPIC, 0), (TOPIC, 1)])
    _drain(reference)
    assert reference_registry.get_sample_value("driftwarden_batches_apart_total") == 0
    threads = _threads(monkeypatch)
    source = FetchingSource(values)
    store = MemoryStateStore()
    runner, registry = _runner(_config(baseline), source, store)
    source.assign([(TOPIC, 0), (TOPIC, 1)])
    _drain(runner)
    assert any(t.startswith("driftwarden-stage") for t in threads)  # it did run apart
    apart = registry.get_sample_value("driftwarden_batches_apart_total")
    assert apart is not None and 0 < apart <= runner.stats.batches
    assert runner._open is None and runner._ahead is None
    assert_same(_states(runner), _states(reference))
    assert runner.stats.events == reference.stats.events == 24_000
    assert runner.stats.rejected == reference.stats.rejected
    assert runner.stats.findings == reference.stats.findings
    assert runner.checkpointer.saved == reference.checkpointer.saved
    assert source.committed == reference_source.committed
    assert _letters(runner) == _letters(reference) != []
    runner.close()
    reader = MemoryStateStore(store.shared)
    reader.refresh()
    for p in (0, 1):
        saved = reader.partition(CheckpointKey.for_partition("g", "sensors", TOPIC, p))
        assert saved is not None and saved.offset == saved.state.events == 12_000


def test_a_crash_while_apart_restarts_exactly(
    data: tuple[dict[int, list[bytes]], Path],
) -> None:
    values, baseline = data
    reference = _reference(values, baseline)
    topic: dict[str, bytes] = {}
    first_source = FetchingSource({p: v[:5_500] for p, v in values.items()})
    first, _ = _runner(_config(baseline), first_source, MemoryStateStore(topic))
    first_source.assign([(TOPIC, 0), (TOPIC, 1)])
    for _ in range(6):  # stop with a batch decoded ahead, never processed
        first.step()
    assert first._ahead is not None
    first.final_checkpoint = False  # as a crash
    first.close()
    source = FetchingSource(values)
    second, _ = _runner(_config(baseline), source, MemoryStateStore(topic))
    source.assign([(TOPIC, 0), (TOPIC, 1)])
    _drain(second)
    assert_same(_states(second), reference)


def test_a_rebalance_in_the_read_ahead_finishes_the_batch_first(
    data: tuple[dict[int, list[bytes]], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    values, baseline = data
    reference = _reference(values, baseline)
    topic: dict[str, bytes] = {}
    source_b = FetchingSource(values)
    b, _ = _runner(_config(baseline), source_b, MemoryStateStore(topic))
    moved: list[int] = []

    def rebalance() -> None:
        # Inside the read made while a batch's drift stage runs apart: the runner
        # must finish that batch (its position included) before the checkpoint.
        assert a._open is not None
        source_a.revoke([(TOPIC, 1)])
        assert a._open is None
        moved.append(a.checkpointer.saved.get((TOPIC, 1), 0))
        source_b.assign([(TOPIC, 1)])

    source_a = FetchingSource(values, rebalance_at=6, then=rebalance)
    a, _ = _runner(_config(baseline), source_a, MemoryStateStore(topic))
    source_a.assign([(TOPIC, 0), (TOPIC, 1)])
    _drain(a)
    _drain(b)
    assert moved  # the rebalance came while a batch was in flight
    assert_same({**_states(a), **_states(b)}, reference)


def test_a_later_batch_of_the_stream_waits_for_the_stage_running_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One poll can bring a model stream's inference and label (or deploy) batches;
    the model stage, which runs first and may switch the drift stage's baseline, must
    not run on the second while the drift stage still folds the first in."""
    from concurrent.futures import Future

    from tests.model.test_model_stage import _batches, _pipeline, _stream

    stream = _stream(tmp_path)
    reference, pipeline = _pipeline(stream), _pipeline(stream)
    batches = _batches(6_000, seed=3)
    expected = [reference.process(b) for b in batches]
    update = DriftStage.update

    def slow(self: DriftStage, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.002)
        return update(self, *args, **kwargs)

    monkeypatch.setattr(DriftStage, "update", slow)
    got = []
    apart = 0
    for a in range(0, len(batches), 2):
        first = pipeline.begin(pipeline.decode(batches[a]), apart=True)
        later = [pipeline.begin(pipeline.decode(b), apart=True) for b in batches[a + 1 : a + 2]]
        running = [o for o in first.outcomes if isinstance(o, Future)]
        apart += len(running)
        if later:
            assert all(f.done() for f in running)
        got += [pipeline.finish(o) for o in (first, *later)]
    assert apart > 0
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected, strict=True):
        assert [repr(f) for f in mine.findings] == [repr(f) for f in theirs.findings]
        assert len(mine.out) == len(theirs.out) and mine.rejected == theirs.rejected
