"""Replaying a file gives the findings that streaming it through Kafka gives."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from monitor.config.schema import parse_config
from monitor.dev.synthetic import DEMO_STREAM, generate_fleet
from monitor.runtime.replay import replay
from monitor.runtime.service import Service
from tests.kafka_utils import create_topics, produce, read_topic

pytestmark = pytest.mark.integration

STEP = 1000


def test_replay_finds_what_the_stream_finds(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    total, drift_at = 40_000, 20_000
    events = generate_fleet(total, seed=21, bad_rate=0.01, drift_at=drift_at)
    data = tmp_path / "fleet.jsonl"
    data.write_bytes(b"\n".join(events.values) + b"\n")
    topic, alerts = f"iot.{unique}", f"alerts.{unique}"
    create_topics(kafka_bootstrap, {topic: 1, f"dlq.{unique}": 1, alerts: 1})
    produce(kafka_bootstrap, topic, events.values, events.keys)
    stream = copy.deepcopy(DEMO_STREAM) | {
        "topic": topic,
        "baseline": {"first_events": 10_000},
        "window": {"events": 4000, "step": STEP},
    }
    raw: dict[str, Any] = {
        "kafka": {"bootstrap.servers": kafka_bootstrap, "session.timeout.ms": 6000},
        "group": f"dw-{unique}",
        "metrics": {"enabled": False},
        "dead_letter_topic": f"dlq.{unique}",
        "source": {"max_batch_events": STEP, "max_wait": "200ms"},
        "streams": [stream],
        "alerts": {"topic": alerts},
        "state": {"enabled": False},
    }
    config = parse_config(raw, env={})

    streamed: dict[tuple[str, str], int] = {}

    def until(stats: Any) -> bool:
        for _, fld, det in stats.drifting:
            streamed.setdefault((fld, det), stats.events)
        return bool(stats.events >= total)

    Service(config, registry=CollectorRegistry()).run(max_seconds=120, until=until)
    replayed = {k: v for k, v in replay(config, data).findings_at().items() if v is not None}
    assert set(streamed) == set(replayed), (streamed, replayed)
    for key, position in replayed.items():
        assert abs(streamed[key] - position) <= STEP, (key, streamed[key], position)

    report = replay(config, data)
    fired = sorted(a.id for a in report.alerts if a.status == "firing")
    on_topic = read_topic(kafka_bootstrap, alerts, expected=len(fired), timeout=20)
    streamed_ids = sorted(
        doc["id"] for doc in (json.loads(m.value()) for m in on_topic) if doc["status"] == "firing"
    )
    assert streamed_ids == fired
