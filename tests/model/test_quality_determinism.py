"""Quality windows and verdicts do not depend on how the two topics interleave.

The same events at 4 partitions, fed with different interleavings of the prediction
and label topics (predictions ahead, labels ahead, a seeded random merge) and different
batch sizes, give the same stream-wide quality verdicts (at the same stream positions)
and the same per-partition estimate findings, and a restart from checkpoints in the
middle of one interleaving gives the findings of the uninterrupted run of another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from connectors.kafka import RawBatch
from detectors.base import Finding
from monitor.dev.model_synthetic import ModelEvents, generate_model_events
from monitor.pipeline.model import IDLE_SECONDS
from monitor.pipeline.stream import StreamPipeline
from tests.model.test_model_stage import _model, _partition_sequences, _stream
from tests.model.test_model_stage import _pipeline as _any_pipeline

PARTS = 4
TOPICS = ("ml.loans.inference", "ml.loans.labels")


def _pipeline(stream: dict[str, Any]) -> StreamPipeline:
    """A pipeline that knows the stream's partition count (as the runner tells it)."""
    pipeline = _any_pipeline(stream)
    pipeline.set_partition_count(PARTS)
    return pipeline


def _sequences(ev: ModelEvents, size: int) -> list[list[RawBatch]]:
    """Per (topic, partition): its batches of ``size`` in offset order."""
    return _partition_sequences(ev, PARTS, size)


def _lagged(seqs: list[list[RawBatch]], lag: int, labels_lag: bool) -> list[RawBatch]:
    """Round robin over the sequences, one topic ``lag`` batches behind the other."""
    out = []
    for i in range(max(map(len, seqs)) + lag):
        for j, s in enumerate(seqs):
            behind = (j >= PARTS) == labels_lag
            k = i - (lag if behind else 0)
            if 0 <= k < len(s):
                out.append(s[k])
    return out


def _random_merge(seqs: list[list[RawBatch]], seed: int) -> list[RawBatch]:
    """A seeded random interleaving that keeps each sequence's order."""
    rng = np.random.default_rng(seed)
    owner = np.concatenate([np.full(len(s), j) for j, s in enumerate(seqs)])
    rng.shuffle(owner)
    pos = [0] * len(seqs)
    out = []
    for j in owner.tolist():
        out.append(seqs[j][pos[j]])
        pos[j] += 1
    return out


def _key(f: Finding) -> tuple[Any, ...]:
    d = dict(f.details)
    return (
        f.detector,
        f.subject,
        d.get("partition"),
        d.get("position"),
        f.window.events,
        f.window.start_time,
        f.window.end_time,
        f.drift,
        round(f.statistic, 12),
        round(d["value"], 12),
    )


def _verdicts(findings: list[Finding]) -> list[tuple[Any, ...]]:
    return sorted(_key(f) for f in findings if f.detector in ("quality", "cbpe"))


def _run(pipeline: StreamPipeline, batches: list[RawBatch]) -> list[Finding]:
    out: list[Finding] = []
    for b in batches:
        out.extend(pipeline.process(b).findings)
    return out


def _evaluated(pipeline: StreamPipeline) -> list[tuple[Any, ...]]:
    return sorted(_key(f) for f in _model(pipeline).evaluate() if f.detector == "quality")


def test_interleavings_and_batch_sizes_give_the_same_findings(tmp_path: Path) -> None:
    stream = _stream(tmp_path, window={"events": 1000, "step": 250})
    ev = generate_model_events(12_000, seed=21, drift_at=6_000)
    runs = {
        "predictions ahead, 700": _lagged(_sequences(ev, 700), 3, labels_lag=True),
        "labels ahead, 256": _lagged(_sequences(ev, 256), 4, labels_lag=False),
        "random, 97": _random_merge(_sequences(ev, 97), seed=1),
        "random, 1500": _random_merge(_sequences(ev, 1500), seed=2),
    }
    results = {}
    for name, batches in runs.items():
        pipeline = _pipeline(stream)
        findings = _run(pipeline, batches)
        counts = _model(pipeline).join_counts()
        results[name] = (_verdicts(findings), _evaluated(pipeline), counts)
    first = next(iter(results.values()))
    assert len(first[0]) > 100
    quality = [k for k in first[0] if k[0] == "quality"]
    assert {k[2] for k in quality} == {None}  # stream verdicts
    positions = sorted({k[3] for k in quality})
    assert positions == [250.0 * i for i in range(1, len(positions) + 1)]  # every step
    assert len(positions) > 40  # ~11,500 joins: one verdict per 250 of the stream
    assert {k[2] for k in first[0] if k[0] == "cbpe"} == {0.0, 1.0, 2.0, 3.0}
    assert any(k[7] for k in quality)  # the drift halfway is flagged
    for name, got in results.items():
        assert got[0] == first[0], name
        assert got[1] == first[1], name
        assert got[2] == first[2], name


def test_restart_in_one_interleaving_equals_another_uninterrupted(tmp_path: Path) -> None:
    stream = _stream(tmp_path, window={"events": 1000, "step": 250})
    ev = generate_model_events(8_000, seed=22)
    whole = _pipeline(stream)
    want = _verdicts(_run(whole, _lagged(_sequences(ev, 700), 3, labels_lag=True)))
    batches = _random_merge(_sequences(ev, 300), seed=3)
    cut = len(batches) // 2
    first = _pipeline(stream)
    got = _run(first, batches[:cut])
    assert sum(p.join.pending for p in _model(first)._parts.values()) > 0
    assert sum(w.n_held for p in _model(first)._parts.values() for w in p.joined.values()) > 0
    seen = {(b.topic, int(b.partitions[0])) for b in batches[:cut]}
    second = _pipeline(stream)  # a new process (kill -9): only the checkpoints survive
    for topic, p in seen:
        second.restore_partition(topic, p, first.partition_state(topic, p))
    got += _run(second, batches[cut:])
    assert _verdicts(got) == want
    assert _model(second).join_counts() == _model(whole).join_counts()


def test_the_judging_replica_judges_remote_partitions_from_their_checkpoints(
    tmp_path: Path,
) -> None:
    """Replica a owns partition 0 and judges; b owns 1-3. a's stream frontier waits for
    b's partitions (no quality verdict before their checkpoints come), then its
    verdicts are those of one process reading all partitions, at the same positions
    (those whose windows b's checkpointed rings still hold)."""
    stream = _stream(tmp_path, window={"events": 1000, "step": 250})
    ev = generate_model_events(6_000, seed=23)
    batches = _lagged(_sequences(ev, 500), 2, labels_lag=True)
    one = _verdicts(_run(_pipeline(stream), batches))
    a, b = _pipeline(stream), _pipeline(stream)
    b.set_ownership({(t, p) for t in TOPICS for p in (1, 2, 3)})
    assert not _model(b).judge
    assert not [
        f for f in _run(b, [x for x in batches if x.partitions[0] != 0]) if f.kind == "model"
    ]
    own = [x for x in batches if x.partitions[0] == 0]
    got = _run(a, own[:-1])
    assert not [f for f in got if f.detector == "quality"]  # waiting for partitions 1-3
    a.set_remote({(t, p): b.partition_state(t, p) for t in TOPICS for p in (1, 2, 3)})
    got += _run(a, own[-1:])
    quality = [k for k in _verdicts(got) if k[0] == "quality"]
    positions = sorted({k[3] for k in quality})
    # b's rings hold its partitions' last 1,000 joins: the positions whose windows
    # reach further back are skipped (counted), never judged on partial windows
    skipped = _model(a).skipped
    assert skipped > 0 and len(positions) >= 4
    assert positions == [positions[0] + 250.0 * i for i in range(len(positions))]
    assert positions[0] == 250.0 * (skipped + 1)
    assert quality == [k for k in one if k[0] == "quality" and k[3] in positions]
    # the same remote states give nothing new at the next batch (a replayed one,
    # skipped by offset)
    again = _run(a, own[-1:])
    assert not [f for f in again if f.detector == "quality"]


@pytest.mark.parametrize("idle_after", [None, 5.0], ids=["default", "configured"])
def test_an_unseen_or_idle_partition_holds_the_stream_back_until_idle(
    tmp_path: Path, idle_after: float | None
) -> None:
    """Partition 3 never gets an event: the stream frontier waits for it (no quality
    verdict), until it has been idle for ``labels.idle_after`` (IDLE_SECONDS unless
    configured; the stage's clock) before the newest event of the others; then their
    joins are judged, at the positions a 3-partition stream has."""
    stream = _stream(tmp_path, window={"events": 1000, "step": 250})
    if idle_after is not None:
        stream["model"]["labels"]["idle_after"] = f"{idle_after}s"
    idle = IDLE_SECONDS if idle_after is None else idle_after
    ev = generate_model_events(6_000, seed=24)
    batches = [b for b in _lagged(_sequences(ev, 500), 2, labels_lag=True) if b.partitions[0] != 3]
    start = 1.8e9  # the stage's clock (labels more than max_future ahead of it are refused)
    now = [start]
    pipeline = _pipeline(stream)
    _model(pipeline).clock = lambda: now[0]
    held = _run(pipeline, batches[:-12])
    assert not [f for f in held if f.detector == "quality"]
    now[0] = start + idle  # partition 3: no event since the stage started
    got = _run(pipeline, batches[-12:])
    quality = sorted({dict(f.details)["position"] for f in got if f.detector == "quality"})
    assert quality and quality == [250.0 * (i + 1) for i in range(len(quality))]
    three = _any_pipeline(stream)
    three.set_partition_count(3)
    want = [k for k in _verdicts(_run(three, batches)) if k[0] == "quality"]
    assert [k for k in _verdicts(got) if k[0] == "quality"] == [
        k for k in want if k[3] <= quality[-1]
    ]


def test_joins_held_behind_a_silent_partition_are_bounded(tmp_path: Path) -> None:
    """Partition 3 never gets an event and is never idle (the clock stands still): the
    others' joins wait for it, at most ``labels.max_held`` per partition and version;
    the oldest beyond are released early and counted."""
    from prometheus_client import CollectorRegistry

    stream = _stream(tmp_path, window={"events": 1000, "step": 250})
    stream["model"]["labels"]["max_held"] = 300
    ev = generate_model_events(6_000, seed=24)
    batches = [b for b in _lagged(_sequences(ev, 500), 2, labels_lag=True) if b.partitions[0] != 3]
    registry = CollectorRegistry()
    pipeline = _any_pipeline(stream, registry)
    pipeline.set_partition_count(PARTS)
    model = _model(pipeline)
    model.clock = lambda: 1.8e9
    got = _run(pipeline, batches)
    assert not [f for f in got if f.detector == "quality"]  # the frontier never passed
    held = [w.n_held for part in model._parts.values() for w in part.joined.values()]
    assert held and max(held) <= 300
    early = registry.get_sample_value(
        "driftwarden_limit_hits_total", {"stream": stream["name"], "limit": "max_held"}
    )
    assert early is not None and early > 0
