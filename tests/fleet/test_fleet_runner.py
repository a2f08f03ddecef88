"""The runner lets the fleet stage judge by wall clock while no event arrives."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import numpy as np
from prometheus_client import CollectorRegistry

from connectors.base import OutMessage
from connectors.kafka import RawBatch
from monitor.config.schema import parse_config
from monitor.dev.fleet_demo import FLEET_FIELDS, fleet_stream
from monitor.metrics import Metrics
from monitor.pipeline.stage import registered_stages
from monitor.runtime.runner import Runner


class _Source:
    def __init__(self, batches: list[RawBatch]) -> None:
        self.batches = batches
        self.assignment = {("iot.fleet", 0)}

    def poll(self) -> list[RawBatch]:
        return [self.batches.pop(0)] if self.batches else []

    def commit(self, next_offsets: Any) -> None:
        return

    def lag(self, positions: Any) -> dict[tuple[str, int], int]:
        return {}

    def probe(self, timeout: float) -> bool:
        return True

    def partition_count(self, topic: str) -> int:
        return 1

    def close(self) -> None:
        return


class _Sink:
    def __init__(self) -> None:
        self.sent: list[OutMessage] = []

    def send(self, message: OutMessage) -> None:
        self.sent.append(message)

    def flush(self, timeout: float) -> int:
        return 0

    def close(self, timeout: float = 10.0) -> int:
        return 0


def test_an_idle_runner_reports_a_quiet_partition_silent() -> None:
    stream = fleet_stream(quiet_after="1s", evaluate_every="1s", detectors=["silent"])
    stream["fields"] = {f: {"type": "float", "detectors": {}} for f in FLEET_FIELDS}
    config = parse_config(
        {"kafka": {"bootstrap.servers": "x:1"}, "streams": [stream], "state": {"enabled": False}},
        env={},
    )
    now = time.time()
    values = [
        msgspec.json.encode(
            {
                "device_id": f"dev-{i % 5}",
                "ts": now - 3.0 + i * 0.02,
                **dict.fromkeys(FLEET_FIELDS, 1.0),
            }
        )
        for i in range(100)
    ]
    batch = RawBatch(
        "iot.fleet", list(values), np.zeros(100, np.int32), np.arange(100), [None] * 100, [-1] * 100
    )
    runner = Runner(
        config,
        metrics=Metrics(CollectorRegistry()),
        source=_Source([batch]),
        sink=_Sink(),
        stages=registered_stages,
    )
    assert runner.step() == 100
    assert not runner.stats.drifting
    deadline = time.monotonic() + 5.0
    while not runner.stats.drifting and time.monotonic() < deadline:
        runner.step()  # idle: the stage's tick judges by wall clock
        time.sleep(0.1)
    assert runner.stats.drifting == {("fleet", f"dev-{i}", "silent") for i in range(5)}
