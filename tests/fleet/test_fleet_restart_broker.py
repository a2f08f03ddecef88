"""The fleet stage in the service against the broker: a restart continues every device.

In-process: a first run stops without its final checkpoint (as a crash would) after
part of the stream, a second run resumes from the checkpoints; every device's state
then equals an uninterrupted run's. With ``kill -9``: the same with the service as a
subprocess killed mid-stream, states compared from the checkpoint topic.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor.checkpoints import CheckpointKey
from monitor.config.schema import parse_config
from monitor.dev.fleet_demo import Failure, FleetScenario, fleet_stream
from monitor.errors import DriftwardenError
from monitor.pipeline.fleet import FleetState
from monitor.runtime.service import Service
from monitor.runtime.state import StateStore
from tests.kafka_utils import create_topics, produce

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEVICES = 300


def _raw(bootstrap: str, topic: str, group: str, suffix: str) -> dict[str, Any]:
    stream = fleet_stream(topic, evaluate_every="60s")
    stream["fields"] = {f: {"type": "float", "detectors": {}} for f in stream["fields"]}  # type: ignore[attr-defined]
    return {
        "kafka": {"bootstrap.servers": bootstrap, "session.timeout.ms": 6000},
        "group": group,
        "metrics": {"enabled": False},
        "dead_letter_topic": f"dlq.{suffix}",
        "source": {"max_batch_events": 1500, "max_wait": "100ms"},
        "state": {"topic": f"state.{suffix}", "every_events": 3000, "every_seconds": "1h"},
        "streams": [stream],
    }


def _produce(bootstrap: str, topic: str) -> int:
    scenario = FleetScenario(
        devices=DEVICES,
        period=10.0,
        failures=(Failure("stuck", (3, 4), 800.0), Failure("silent", (5,), 900.0)),
    )
    values: list[bytes] = []
    keys: list[bytes] = []
    for chunk in scenario.chunks(0.0, 1500.0, 100.0):
        values += chunk.payloads()
        keys += [f"dev-{c:05d}".encode() for c in chunk.codes.tolist()]
    return sum(produce(bootstrap, topic, values, keys).values())


def _devices(pipeline_states: dict[int, Any]) -> dict[str, tuple[Any, ...]]:
    """Per device id: its partition and every array's value (slot order does not matter).

    ``status`` (the condition bits of the last evaluation) is left out: evaluations
    happen when a batch crosses an evaluation tick, so their moments follow batching.
    """
    out: dict[str, tuple[Any, ...]] = {}
    for p, state in pipeline_states.items():
        plain = state if isinstance(state, dict) else state.to_plain()
        table = FleetState.from_plain(plain["stages"][-1]).table  # stages: drift, fleet
        arrays = table.arrays
        names = [k for k in sorted(arrays) if k != "status"]
        for i, dev in enumerate(table.ids):
            out[dev] = (p, *((k, np.asarray(arrays[k][i]).tolist()) for k in names))
    return out


def _run(service: Service, total: int) -> dict[str, tuple[Any, ...]]:
    (pipeline,) = set(service.runner.pipelines.values())
    taken: dict[str, tuple[Any, ...]] = {}

    def until(stats: Any) -> bool:
        if sum(pipeline.partition_events.values()) >= total:
            topic = pipeline.spec.all_topics[0]
            parts = sorted(p for t, p in pipeline.partition_events if t == topic)
            taken.update(_devices({p: pipeline.partition_state(topic, p) for p in parts}))
            return True
        return False

    service.run(max_seconds=90, until=until)
    return taken


@pytest.mark.slow
def test_restart_after_a_crash_continues_every_device(kafka_bootstrap: str, unique: str) -> None:
    topic = f"fleet.{unique}"
    create_topics(kafka_bootstrap, {topic: 3, f"dlq.{unique}": 1})
    total = _produce(kafka_bootstrap, topic)

    def service(group: str, suffix: str) -> Service:
        raw = _raw(kafka_bootstrap, topic, group, suffix)
        return Service(parse_config(raw, env={}), registry=CollectorRegistry())

    reference = _run(service(f"whole-{unique}", f"{unique}w"), total)
    assert len(reference) == DEVICES
    first = service(f"split-{unique}", f"{unique}s")
    first.runner.final_checkpoint = False  # no goodbye checkpoint: a crash
    _run(first, total // 2)
    resumed = _run(service(f"split-{unique}", f"{unique}s"), total)
    assert resumed == reference


def _checkpointed(bootstrap: str, state_topic: str, group: str, topic: str) -> dict[str, Any]:
    store = StateStore({"bootstrap.servers": bootstrap}, state_topic, create=False)
    try:
        try:
            store.refresh(timeout=10)
        except DriftwardenError:  # the service has not created its state topic yet
            return {}
        states = {}
        for p in range(3):
            saved = store.partition(CheckpointKey.for_partition(group, "fleet", topic, p))
            if saved is not None:
                states[p] = saved.to_plain()
        return states
    finally:
        store.close()


def _service_process(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "monitor.cli", "run", str(config), "--quiet"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )


def _wait_checkpointed(
    bootstrap: str, raw: dict[str, Any], topic: str, at_least: int, timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        states = _checkpointed(bootstrap, raw["state"]["topic"], raw["group"], topic)
        done = sum(int(s["pipeline"]["events"]) for s in states.values())
        if done >= at_least or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


@pytest.mark.slow
def test_kill_9_mid_stream_then_restart_equals_an_uninterrupted_run(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    topic = f"fleetk.{unique}"
    create_topics(kafka_bootstrap, {topic: 3, f"dlq.{unique}": 1})
    total = _produce(kafka_bootstrap, topic)
    finals = []
    for name, kill in (("whole", False), ("killed", True)):
        raw = _raw(kafka_bootstrap, topic, f"{name}-{unique}", f"{unique}{name[0]}")
        raw["state"]["every_seconds"] = "2s"  # the tail of the stream gets checkpointed too
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump(raw))
        log = tmp_path / f"{name}.log"
        proc = _service_process(config, log)
        try:
            if kill:
                _wait_checkpointed(kafka_bootstrap, raw, topic, total // 3, 60)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                proc = _service_process(config, log)
            states = _wait_checkpointed(kafka_bootstrap, raw, topic, total, 90)
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        states = _checkpointed(kafka_bootstrap, raw["state"]["topic"], raw["group"], topic)
        assert sum(int(s["pipeline"]["events"]) for s in states.values()) == total, log.read_text()
        finals.append(_devices({p: s["pipeline"] for p, s in states.items()}))
    assert len(finals[0]) == DEVICES
    assert finals[1] == finals[0]
