"""A realized accuracy drop is flagged after as many joined events at 4 partitions as at 1.

Quality windows are the stream's (``monitor.pipeline.model``): the partitions' joins
merge into one sequence by key, so the same data read through 1 or 4 partitions gives
windows of the same joins and detects the drop at about the same stream position
(per-partition windows would take about 4 times as many events).
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from connectors.kafka import RawBatch
from monitor.dev.model_synthetic import ModelEvents, generate_model_events
from tests.model.test_model_stage import _model, _partition_sequences, _pipeline, _stream

N, DRIFT_AT, DROP = 36_000, 24_000, 0.025


def _drop_accuracy(ev: ModelEvents, seed: int) -> ModelEvents:
    """The labels after ``DRIFT_AT`` flipped where the model was right, with the
    probability that lowers its accuracy by ``DROP``."""
    said = ev.score >= 0.5
    right = said == ev.truth
    accuracy = float(right[:DRIFT_AT].mean())
    rng = np.random.default_rng(seed)
    flip = (np.arange(ev.truth.size) >= DRIFT_AT) & right
    flip &= rng.uniform(0, 1, ev.truth.size) < DROP / accuracy
    labels = []
    for raw, key in zip(ev.labels, ev.label_keys, strict=True):
        i = int(key.rsplit(b"-", 1)[1])
        if flip[i]:
            row = msgspec.json.decode(raw)
            row["defaulted"] = 1 - int(row["defaulted"])
            raw = msgspec.json.encode(row)
        labels.append(raw)
    return ModelEvents(
        ev.inference, ev.inference_keys, labels, ev.label_keys, ev.label_time, ev.truth, ev.score
    )


def _batches(ev: ModelEvents, parts: int, size: int = 1000) -> list[RawBatch]:
    """Both topics' partitions (request number modulo ``parts``), round robin."""
    seqs = _partition_sequences(ev, parts, size)
    return [s[i] for i in range(max(map(len, seqs))) for s in seqs if i < len(s)]


def _first_alarm(tmp_path: Path, ev: ModelEvents, parts: int) -> float | None:
    stream = _stream(tmp_path, metrics=["accuracy"], window={"events": 5000, "step": 500})
    stream["model"]["quality"]["min_drop"] = 0.01
    pipeline = _pipeline(stream)
    pipeline.set_partition_count(parts)
    positions = []
    for batch in _batches(ev, parts):
        for f in pipeline.process(batch).findings:
            if f.detector == "quality" and f.drift:
                positions.append(dict(f.details)["position"])
    assert _model(pipeline).skipped == 0
    return min(positions, default=None)


@pytest.mark.slow
def test_a_drop_is_flagged_as_early_at_four_partitions_as_at_one(tmp_path: Path) -> None:
    for seed in (31, 32):
        ev = _drop_accuracy(generate_model_events(N, seed=seed), seed)
        # the joins whose prediction came before the drop: the drop's stream position
        start = sum(int(k.rsplit(b"-", 1)[1]) < DRIFT_AT for k in set(ev.label_keys))
        one, four = (_first_alarm(tmp_path, ev, parts) for parts in (1, 4))
        assert one is not None and four is not None, (seed, one, four)
        assert start < one and start < four, (seed, start, one, four)  # no false alarm
        delay_one, delay_four = one - start, four - start
        assert delay_one <= 10_000 and delay_four <= 1.5 * delay_one, (
            seed,
            delay_one,
            delay_four,
        )
