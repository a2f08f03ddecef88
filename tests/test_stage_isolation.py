"""A stage that fails on some data never stops the stream: its batch's events go to the
dead-letter topic as ``stage_error``, the failure is counted, the other stages and the
next batches go on."""

from __future__ import annotations

import copy

import numpy as np
from prometheus_client import CollectorRegistry

from connectors.kafka import RawBatch
from detectors.base import Finding
from monitor.config.schema import parse_config
from monitor.dev.synthetic import DEMO_STREAM, generate_fleet
from monitor.metrics import Metrics
from monitor.pipeline.decode import Batch
from monitor.pipeline.stage import Coordinates, SlotArray, registered_stages
from monitor.pipeline.stream import StreamPipeline, build_pipelines


class Faulty:
    """A stage with a bug: it raises on every batch whose first slot is odd."""

    name = "faulty"
    judge = True
    ready = True

    def __init__(self) -> None:
        self.seen = 0

    def update(
        self, batch: Batch, slots: SlotArray, *, coordinates: Coordinates | None = None
    ) -> list[Finding]:
        if int(slots[0]) % 2:
            raise ZeroDivisionError("a bug on this data")
        self.seen += batch.n
        return []


def _raw(values: list[bytes], partition: int, start: int) -> RawBatch:
    n = len(values)
    return RawBatch(
        "iot.sensors",
        values,
        np.full(n, partition, np.int32),
        np.arange(start, start + n, dtype=np.int64),
        [None] * n,
        np.full(n, -1, np.int64),
    )


def test_a_failing_stage_dead_letters_its_batch_and_the_stream_goes_on() -> None:
    stream = copy.deepcopy(DEMO_STREAM) | {"baseline": {"first_events": 500}}
    config = parse_config(
        {"kafka": {"bootstrap.servers": "127.0.0.1:1"}, "streams": [stream]}, env={}
    )
    metrics = Metrics(CollectorRegistry())
    faulty = Faulty()

    def stages(pipeline: StreamPipeline) -> list[object]:
        return [faulty, *registered_stages(pipeline)]

    pipeline = build_pipelines(config, metrics, stages)["iot.sensors"]  # type: ignore[arg-type]
    drift = pipeline.stages[1]
    values = generate_fleet(3000, seed=3, bad_rate=0.0).values

    ok = pipeline.process(_raw(values[:1000], 0, 0))
    assert ok.stage_errors == 0 and faulty.seen == ok.accepted
    bad = pipeline.process(_raw(values[1000:2000], 1, 0))
    # every accepted event of the failed batch is in the dead-letter topic, once
    errors = [m for m in bad.out if dict(m.headers)["driftwarden.reason"] == b"stage_error"]
    assert len(errors) == bad.accepted == bad.stage_errors
    detail = dict(errors[0].headers)["driftwarden.detail"].decode()
    assert detail == "stage faulty: ZeroDivisionError: a bug on this data"
    assert sorted(int(dict(m.headers)["driftwarden.offset"]) for m in errors) == list(
        range(bad.accepted)
    )
    assert bad.dead_letters == bad.stage_errors + sum(bad.rejected.values())
    # the other stages still folded the batch in; the next batch is processed normally
    assert drift.partition_state(1) is not None
    again = pipeline.process(_raw(values[2000:], 0, 1000))
    assert again.stage_errors == 0 and faulty.seen == ok.accepted + again.accepted
    sample = metrics.registry.get_sample_value(
        "driftwarden_stage_errors_total", {"stream": "sensors", "stage": "faulty"}
    )
    assert sample == 1.0
    assert (
        metrics.registry.get_sample_value(
            "driftwarden_stage_errors_total", {"stream": "sensors", "stage": "drift"}
        )
        == 0.0
    )


class FaultyTick(Faulty):
    def tick(self) -> list[Finding]:
        raise RuntimeError("a bug in the wall-clock judgement")


def test_a_failing_tick_is_counted_and_the_loop_goes_on() -> None:
    stream = copy.deepcopy(DEMO_STREAM) | {"baseline": {"first_events": 500}}
    config = parse_config(
        {"kafka": {"bootstrap.servers": "127.0.0.1:1"}, "streams": [stream]}, env={}
    )
    metrics = Metrics(CollectorRegistry())
    stage = FaultyTick()
    pipeline = build_pipelines(config, metrics, lambda p: [stage])["iot.sensors"]  # type: ignore[list-item,return-value,arg-type]
    assert pipeline.tick_stage(stage) == []
    assert pipeline.tick_stage(stage) == []
    sample = metrics.registry.get_sample_value(
        "driftwarden_stage_errors_total", {"stream": "sensors", "stage": "faulty"}
    )
    assert sample == 2.0
