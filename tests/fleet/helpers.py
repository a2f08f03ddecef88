"""Feeding a synthetic fleet to a FleetStage without JSON (the stage sees decoded batches)."""

from __future__ import annotations

from typing import Any

import numpy as np
import yaml

from detectors.base import Finding
from monitor.config.schema import StreamSpec, parse_config
from monitor.dev.fleet_demo import FLEET_FIELDS, FleetChunk, FleetScenario, fleet_stream
from monitor.pipeline.decode import Batch, StreamDecoder
from monitor.pipeline.fleet import FleetStage

CLOCK = 2_000_000_000.0


def fleet_spec(**fleet: Any) -> StreamSpec:
    raw = {
        "kafka": {"bootstrap.servers": "127.0.0.1:1"},
        "streams": [fleet_stream(**fleet)],
    }
    return parse_config(yaml.safe_load(yaml.safe_dump(raw)), env={}).streams[0]


def make_stage(spec: StreamSpec, devices: int, clock: float = CLOCK) -> FleetStage:
    decoder = StreamDecoder(spec)
    assert decoder.entities is not None
    decoder.entities.add([f"dev-{i:05d}" for i in range(devices)])
    return FleetStage(spec, decoder, clock=lambda: clock)


def to_batch(chunk: FleetChunk, valid: np.ndarray | None = None) -> Batch:
    n = len(chunk.codes)
    ok = np.ones((n, len(FLEET_FIELDS)), dtype=np.bool_) if valid is None else valid
    return Batch(
        stream="fleet",
        n_input=n,
        rows=np.arange(n, dtype=np.int64),
        columns={f: chunk.values[:, j].copy() for j, f in enumerate(FLEET_FIELDS)},
        valid={f: ok[:, j].copy() for j, f in enumerate(FLEET_FIELDS)},
        entity=chunk.codes,
        event_time=chunk.times,
    )


def feed(
    stage: FleetStage,
    scenario: FleetScenario,
    t0: float,
    t1: float,
    partitions: int = 4,
    chunk_seconds: float = 3600.0,
    timed: list[tuple[Finding, float]] | None = None,
) -> list[Finding]:
    """Feed ``[t0, t1)`` in chunks; ``timed`` collects (finding, event time it came at)."""
    findings: list[Finding] = []
    for chunk in scenario.chunks(t0, t1, chunk_seconds):
        if len(chunk.codes) == 0:
            continue
        parts = (chunk.codes % partitions).astype(np.int32)
        out = stage.update(to_batch(chunk), parts)
        findings.extend(out)
        if timed is not None:
            now = float(chunk.times.max()) - scenario.start
            timed.extend((f, now) for f in out)
    return findings


def device(finding: Finding) -> int:
    return int(finding.subject.removeprefix("dev-"))
