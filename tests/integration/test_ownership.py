"""One ownership rule: whoever judges a stream keeps that stream's alert state.

Two streams, two ``driftwarden run`` replicas in one group, one partition per
stream's topic, so each replica judges one stream. The judge of the second stream
is killed with SIGKILL while that stream's episodes are open, and restarted. The
episodes must continue where the last checkpoint left them: each alert fired
before the kill resolves exactly once, under its original id, no alert of the
stream fires under an id it did not have before, and none fires twice.
"""

from __future__ import annotations

import ast
import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.alerting.state import alert_ids
from monitor.checkpoints import CheckpointKey
from monitor.dev.synthetic import DEMO_STREAM, generate_fleet
from monitor.runtime.state import StateStore
from tests.integration.test_scale import Replica, _baseline_file
from tests.kafka_utils import create_topics, produce, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DRIFT_AT, DRIFT_UNTIL, TOTAL = 12_000, 30_000, 50_000
KILL_AFTER = 24_000  # events of the second stream produced before the kill


def _stream(name: str, topic: str, baseline: Path) -> dict[str, Any]:
    stream = copy.deepcopy(DEMO_STREAM) | {
        "name": name,
        "topic": topic,
        "baseline": {"file": str(baseline)},
        "window": {"events": 5000, "step": 1000},
    }
    fields = stream["fields"]
    fields["temperature"]["detectors"] = []
    fields["humidity"]["detectors"] = []
    fields["vibration"]["detectors"] = ["ks"]
    fields["status"]["detectors"] = ["chi2"]
    return stream


def _alerts(bootstrap: str, topic: str, stream: str) -> list[tuple[str, str]]:
    """(id, status) of ``stream``'s alerts on the alerts topic, in order."""
    out = []
    for msg in read_topic(bootstrap, topic, 1, timeout=10, settle=2):
        doc = json.loads(msg.value())
        if doc["stream"] == stream:
            out.append((doc["id"], doc["status"]))
    return out


def _wait(predicate: Any, timeout: float, every: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def _owned(replica: Replica) -> set[tuple[str, int]]:
    """What this start of ``replica`` owns now, from its rebalance log lines
    (assignments are incremental: cooperative-sticky)."""
    owned: set[tuple[str, int]] = set()
    for line in replica.log_text().splitlines():
        for verb in ("assigned", "revoked"):
            _, found, listed = line.partition(f" {verb} partitions=")
            if found:
                parts = set(ast.literal_eval(listed.strip()))
                owned = owned | parts if verb == "assigned" else owned - parts
    return owned


def _judge(replicas: list[Replica], topic: str) -> Replica | None:
    """The running replica that owns ``topic``'s partition 0 (judges its stream)."""
    for r in replicas:
        if r.proc is not None and r.proc.poll() is None and (topic, 0) in _owned(r):
            return r
    return None


def test_killing_the_judge_of_the_second_stream_keeps_its_episodes(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    first, second = f"iot.{unique}.a", f"iot.{unique}.b"
    alerts_topic = f"alerts.{unique}"
    create_topics(kafka_bootstrap, {first: 1, second: 1, alerts_topic: 1, f"dlq.{unique}": 1})
    clean = generate_fleet(20_000, seed=3, bad_rate=0.0)
    events = generate_fleet(
        TOTAL, seed=4, bad_rate=0.0, drift_at=DRIFT_AT, drift_until=DRIFT_UNTIL, drift_shift=2.0
    )
    baseline = _baseline_file(tmp_path, copy.deepcopy(DEMO_STREAM), clean.values)
    raw = {
        "kafka": {"bootstrap.servers": kafka_bootstrap, "session.timeout.ms": 6000},
        "group": f"g-{unique}",
        "metrics": {"enabled": False},
        "dead_letter_topic": f"dlq.{unique}",
        "source": {"max_batch_events": 1000, "max_wait": "100ms"},
        "state": {"topic": f"state.{unique}", "every_events": 2000, "every_seconds": "1s"},
        "alerts": {"topic": alerts_topic, "resolve_after": 3},
        "streams": [
            _stream("alpha", first, baseline),
            _stream("beta", second, baseline),
        ],
    }
    store = StateStore({"bootstrap.servers": kafka_bootstrap}, raw["state"]["topic"])
    path = tmp_path / "replica.yaml"
    path.write_text(yaml.safe_dump(raw))
    replicas = [Replica(path, f"r{i}", tmp_path) for i in range(2)]
    produce(kafka_bootstrap, first, clean.values[:10_000], clean.keys[:10_000])
    try:
        replicas[0].start()
        assert replicas[0].wait_assigned()  # r0 joins first; r1's join splits the partitions
        replicas[1].start()

        def split() -> bool:
            a, b = _judge(replicas, first), _judge(replicas, second)
            return a is not None and b is not None and a is not b

        assert _wait(split, 60), "the two streams did not end up judged by two replicas"
        produce(kafka_bootstrap, second, events.values[:KILL_AFTER], events.keys[:KILL_AFTER])
        assert _wait(
            lambda: any(s == "firing" for _, s in _alerts(kafka_bootstrap, alerts_topic, "beta")),
            60,
        ), "the second stream's drift did not fire"
        before = _alerts(kafka_bootstrap, alerts_topic, "beta")
        fired = {i for i, s in before if s == "firing"}
        assert fired and not any(s == "resolved" for _, s in before)

        def checkpointed() -> bool:  # the judge's checkpoint holds the open episodes
            store.refresh()
            kept = store.stream(CheckpointKey.for_alerts(raw["group"], "beta"))
            return kept is not None and alert_ids(kept.alerts.engine) >= fired

        assert _wait(checkpointed, 30, every=0.5)
        judge = _judge(replicas, second)
        assert judge is not None
        assert judge.proc is not None
        judge.proc.kill()  # SIGKILL: no final checkpoint
        judge.proc.wait(10)
        judge.start()
        produce(kafka_bootstrap, second, events.values[KILL_AFTER:], events.keys[KILL_AFTER:])

        def all_resolved() -> bool:
            got = _alerts(kafka_bootstrap, alerts_topic, "beta")
            return {i for i, s in got if s == "resolved"} >= fired

        assert _wait(all_resolved, 120, every=2.0), "not every open episode resolved"
        time.sleep(3.0)  # anything duplicated would arrive now
    finally:
        store.close()
        for r in replicas:
            if r.proc is not None and r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait(10)
    after = _alerts(kafka_bootstrap, alerts_topic, "beta")
    firings = [i for i, s in after if s == "firing"]
    assert set(firings) == fired, "a firing under a new id"
    # The episodes continued: a judge without their state would open them again
    # (under the same ids, their counters lost with them).
    assert sorted(firings) == sorted(fired), "an open episode fired again"
    resolved = [i for i, s in after if s == "resolved"]
    assert sorted(resolved) == sorted(fired), "each episode resolves exactly once"
