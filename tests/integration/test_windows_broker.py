"""Stream windows on the real broker: the same detection delay on 1 and 4 partitions,
and alert evidence whose offsets, read back from the topic, bound the judged window."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry

from detectors.baseline import Baseline, build_numeric, save_baseline
from detectors.ks import ks_from_counts
from monitor.config.schema import parse_config
from monitor.runtime.service import Service
from tests.kafka_utils import create_topics, produce_waiting, read_topic

pytestmark = pytest.mark.integration

TOTAL, SHIFT_AT, T0 = 24_000, 10_000, 1_700_000_000.0
WINDOW, STEP = 4_000, 500


def _stream(seed: int) -> np.ndarray:
    """x ~ N(0, 1), +0.25 sd from SHIFT_AT on."""
    x = np.random.default_rng(seed).normal(size=TOTAL)
    x[SHIFT_AT:] += 0.25
    return x


def _produce_round_robin(bootstrap: str, topic: str, partitions: int, x: np.ndarray) -> None:
    """Event i -> partition i % P, offset i // P, produced as a live stream: in slices
    of 500 events, so the consumer reads the partitions side by side (a backlog is
    read one partition after the other, and its verdicts follow the lead partition)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(TOTAL):
        if i % 500 == 0:
            producer.flush(10)
            time.sleep(0.02)
        doc = {"x": float(x[i]), "ts": T0 + i}
        produce_waiting(producer, topic, value=json.dumps(doc).encode(), partition=i % partitions)
        producer.poll(0)
    assert producer.flush(30) == 0


def _run(bootstrap: str, unique: str, partitions: int, tmp_path: Path) -> dict[str, Any]:
    topic = f"win.{unique}.{partitions}"
    create_topics(bootstrap, {topic: partitions, f"dlq.{unique}{partitions}": 1})
    rng = np.random.default_rng(99)
    baseline = Baseline(
        id=f"ref-{unique}",
        created_at="2026-11-29",
        source="test",
        fields={"x": build_numeric(rng.normal(size=100_000))},
    )
    path = tmp_path / f"ref{partitions}.json"
    save_baseline(baseline, path)
    x = _stream(seed=7)
    config = parse_config(
        {
            "kafka": {"bootstrap.servers": bootstrap, "session.timeout.ms": 6000},
            "group": f"dw-{unique}-{partitions}",
            "metrics": {"enabled": False},
            "dead_letter_topic": f"dlq.{unique}{partitions}",
            "source": {"max_batch_events": 5_000, "max_wait": "100ms"},
            "streams": [
                {
                    "name": "w",
                    "topic": topic,
                    "event_time": "ts",
                    "fields": {"x": {"type": "float", "detectors": ["ks"]}},
                    "baseline": {"file": str(path)},
                    "window": {"events": WINDOW, "step": STEP},
                }
            ],
            "alerts": {"topic": f"alerts.{unique}{partitions}", "sinks": []},
        },
        env={},
    )
    service = Service(config, registry=CollectorRegistry())
    producer = threading.Thread(
        target=_produce_round_robin, args=(bootstrap, topic, partitions, x), daemon=True
    )

    def until(stats: Any) -> bool:
        # Produce once the partitions are assigned, so the stream is read as it is written.
        if not producer.is_alive() and service.runner.source.assignment and stats.events == 0:
            producer.start()
        return bool(stats.events >= TOTAL)

    service.run(max_seconds=60, until=until)
    producer.join(30)
    msgs = read_topic(bootstrap, f"alerts.{unique}{partitions}", 1, timeout=15, settle=0.5)
    alerts = [json.loads(m.value()) for m in sorted(msgs, key=lambda m: m.offset())]
    firing = next(a for a in alerts if a["status"] == "firing")
    return {"topic": topic, "alert": firing, "x": x, "baseline": baseline}


def _delay(alert: dict[str, Any], partitions: int) -> int:
    """Shifted events the judged window had taken in when the shift was flagged: per
    partition the events from its first shifted one (event i sits at i % P, i // P) to
    the window's last offset. On one partition: the position past the shift."""
    delay = 0
    for w in alert["evidence"]["partitions"]:
        first_shifted = -(-(SHIFT_AT - w["partition"]) // partitions)
        delay += max(0, w["last_offset"] + 1 - first_shifted)
    return delay


def _read_range(bootstrap: str, topic: str, partition: int, first: int, last: int) -> list[Any]:
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "evidence-reader", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, partition, first)])
    out: list[Any] = []
    deadline = time.monotonic() + 30
    try:
        while len(out) < last - first + 1 and time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.5):
                if m.error() is None and m.offset() <= last:
                    out.append(json.loads(m.value()))
    finally:
        consumer.close()
    return out


@pytest.mark.slow
def test_detection_delay_and_evidence_on_one_and_four_partitions(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    delays = {}
    for partitions in (1, 4):
        run = _run(kafka_bootstrap, unique, partitions, tmp_path)
        alert, topic = run["alert"], run["topic"]
        delays[partitions] = _delay(alert, partitions)
        ev = alert["evidence"]
        assert len(ev["partitions"]) == partitions
        # Read the window back from the topic: the offsets bound exactly its events,
        # the event times span them, and the statistic is recomputed from them.
        values = []
        for w in ev["partitions"]:
            docs = _read_range(
                kafka_bootstrap, topic, w["partition"], w["first_offset"], w["last_offset"]
            )
            assert len(docs) == w["events"] == w["last_offset"] - w["first_offset"] + 1
            assert min(d["ts"] for d in docs) == w["start_time"]
            assert max(d["ts"] for d in docs) == w["end_time"]
            values += [d["x"] for d in docs]
        assert sum(w["events"] for w in ev["partitions"]) == ev["window"]["events"]
        base = run["baseline"].fields["x"]
        counts = np.bincount(base.bin_index(np.asarray(values)), minlength=base.bins)
        cdf = np.cumsum(base.counts[:-1].astype(np.float64)) / base.n
        assert float(ks_from_counts(cdf, counts)) == pytest.approx(ev["statistic"], abs=1e-12)
        assert ev["statistic"] >= ev["threshold"]
        assert ev["statement"].startswith(f"ks statistic {ev['statistic']:.4g} >= threshold")
        assert ev["baseline_id"] == f"ref-{unique}"
        # started_at: the event time at which the window first crossed (its newest event).
        assert alert["started_at"].startswith("2023-11-1")
    assert 0 < delays[1] <= WINDOW
    assert 0 < delays[4] <= 1.5 * delays[1], delays
