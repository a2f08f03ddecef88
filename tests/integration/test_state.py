"""Checkpointed state: a restart (graceful or not) continues exactly."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from monitor.config.schema import parse_config
from monitor.dev.synthetic import DEMO_STREAM, generate_fleet
from monitor.runtime.service import Service
from tests.kafka_utils import assert_same, create_topics, produce

pytestmark = pytest.mark.integration

TOTAL = 40_000


def _config(bootstrap: str, topic: str, group: str, suffix: str, fetch: str = "librdkafka") -> Any:
    stream = copy.deepcopy(DEMO_STREAM) | {
        "topic": topic,
        "baseline": {"first_events": 8_000},
        "window": {"events": 4000, "step": 500},
    }
    return parse_config(
        {
            "kafka": {"bootstrap.servers": bootstrap, "session.timeout.ms": 6000},
            "group": group,
            "metrics": {"enabled": False},
            "dead_letter_topic": f"dlq.{suffix}",
            "source": {"max_batch_events": 1500, "max_wait": "100ms", "fetch": fetch},
            "state": {"topic": f"state.{suffix}", "every_events": 3000, "every_seconds": "1h"},
            "streams": [stream],
        },
        env={},
    )


def _events_done(service: Service) -> int:
    """Events folded into the state, restored ones included."""
    (pipeline,) = set(service.runner.pipelines.values())
    return sum(pipeline.partition_events.values())


def _snapshot(service: Service) -> dict[str, Any]:
    (pipeline,) = set(service.runner.pipelines.values())
    stage = pipeline.stages[0]
    parts = sorted(pipeline.partition_events)
    return {
        "events": {k: pipeline.partition_events[k] for k in parts},
        "state": {k: pipeline.partition_state(*k) for k in parts},
        "baseline": stage.baseline.id,
        "verdicts": sorted((f.subject, f.detector, f.statistic, f.drift) for f in stage.evaluate()),
    }


def _run_until(service: Service, events: int) -> dict[str, Any]:
    """Run until ``events`` are folded into the state; the snapshot taken then
    (closing revokes the partitions and drops their state)."""
    taken: dict[str, Any] = {}

    def until(stats: Any) -> bool:
        if _events_done(service) >= events:
            taken.update(_snapshot(service))
            return True
        return False

    service.run(max_seconds=120, until=until)
    return taken


@pytest.mark.parametrize(
    ("crash", "fetch"),
    [(False, "librdkafka"), (True, "librdkafka"), (True, "direct")],
    ids=["graceful", "crash", "crash-direct-fetch"],
)
def test_restart_from_checkpoint_equals_an_uninterrupted_run(
    kafka_bootstrap: str, unique: str, crash: bool, fetch: str
) -> None:
    """``crash-direct-fetch``: the restarted run reads with ``source.fetch: direct``
    (from the checkpoint's offsets) and still equals librdkafka's uninterrupted run."""
    unique = f"{unique}{int(crash)}{fetch[0]}"
    topic = f"iot.{unique}"
    # One partition: a baseline built from the "first events" is then the same in every
    # run (with several, which events come first follows how partitions interleave;
    # tests/integration/test_scale.py covers several partitions with a baseline file).
    create_topics(kafka_bootstrap, {topic: 1, f"dlq.{unique}": 1})
    events = generate_fleet(TOTAL, seed=12, bad_rate=0.02, drift_at=25_000)
    produced = produce(kafka_bootstrap, topic, events.values, events.keys)

    def service(group: str, suffix: str, fetch: str = "librdkafka") -> Service:
        config = _config(kafka_bootstrap, topic, group, suffix, fetch)
        return Service(config, registry=CollectorRegistry())

    reference = _run_until(service(f"whole-{unique}", f"{unique}w"), TOTAL)
    assert reference["events"] == {(topic, p): n for p, n in produced.items()}
    assert any(drift for *_, drift in reference["verdicts"])

    first = service(f"split-{unique}", f"{unique}s", fetch)
    first.runner.final_checkpoint = not crash
    _run_until(first, 15_000)
    resumed = _run_until(service(f"split-{unique}", f"{unique}s", fetch), TOTAL)
    assert_same(resumed, reference)
