"""Driving a drift stage in process: columns in, findings out, batch by batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors.base import Finding
from detectors.baseline import Baseline, build_numeric
from monitor.config.schema import StreamSpec, parse_config
from monitor.pipeline.decode import Batch, StreamDecoder
from monitor.pipeline.drift import DriftStage


def stream_spec(fields: dict[str, Any], **stream: Any) -> StreamSpec:
    """Stream ``s`` on topic ``t`` with these fields (and other stream keys), its
    baseline from its first event, in an otherwise minimal configuration."""
    config = parse_config(
        {
            "kafka": {"bootstrap.servers": "127.0.0.1:9"},
            "group": "g",
            "metrics": {"enabled": False},
            "dead_letter_topic": "dlq",
            "streams": [
                {"name": "s", "topic": "t", "fields": fields, "baseline": {"first_events": 1}}
                | stream
            ],
        },
        env={},
    )
    return config.streams[0]


def numeric_stage(
    fields: list[str],
    partitions: int,
    detectors: tuple[str, ...] = ("ks", "psi"),
    window: int = 10_000,
    step: int = 1_000,
    seed: int = 0,
    baseline_events: int = 100_000,
) -> DriftStage:
    """A stage over float fields with an N(0, 1) baseline per field."""
    spec = stream_spec(
        {f: {"type": "float", "detectors": list(detectors)} for f in fields},
        format="json",
        window={"events": window, "step": step},
    )
    rng = np.random.default_rng(seed)
    base = {f: build_numeric(rng.normal(size=baseline_events)) for f in fields}
    baseline = Baseline(id="ref-1", created_at="2026-11-29", source="test", fields=base)
    stage = DriftStage(spec, StreamDecoder(spec), baseline)
    stage.set_partition_count(partitions)
    return stage


@dataclass(frozen=True)
class Fed:
    """Findings of a run with the stream position (events fed) at which each came."""

    findings: list[tuple[int, Finding]]

    def first_drift(self, subject: str, detector: str) -> int | None:
        for pos, f in self.findings:
            if f.drift and f.subject == subject and f.detector == detector:
                return pos
        return None


def feed(
    stage: DriftStage,
    columns: dict[str, npt.NDArray[np.float64]],
    partitions: npt.NDArray[np.int32],
    batch: int,
    times: npt.NDArray[np.float64] | None = None,
    as_matrix: bool = False,
) -> Fed:
    """Feed the stream in batches of ``batch`` rows (offsets counted per partition).
    ``as_matrix``: each batch's columns and masks are rows of one matrix each, as the
    decoder hands them out (else separate arrays).

    A finding's position is the stream index just past the window it judges when
    the stage reports it: the batch end, or for verdicts inside a batch the step
    boundary it was taken at (recovered from the window's last offsets).
    """
    n = len(partitions)
    offsets = np.zeros(n, np.int64)
    for p in np.unique(partitions):
        rows = partitions == p
        offsets[rows] = np.arange(int(rows.sum()))
    # Stream index of (partition, offset).
    index = {(int(p), int(o)): i for i, (p, o) in enumerate(zip(partitions, offsets, strict=True))}
    out: list[tuple[int, Finding]] = []
    for a in range(0, n, batch):
        b = min(a + batch, n)
        cols = {k: v[a:b] for k, v in columns.items()}
        valid = {k: ~np.isnan(v) for k, v in cols.items()}
        if as_matrix:
            values_m = np.stack(list(cols.values()))
            valid_m = np.stack(list(valid.values()))
            cols = {k: values_m[i] for i, k in enumerate(cols)}
            valid = {k: valid_m[i] for i, k in enumerate(valid)}
        bt = Batch(
            stream="s",
            n_input=b - a,
            rows=np.arange(b - a, dtype=np.int64),
            columns=cols,
            valid=valid,
            event_time=None if times is None else times[a:b],
        )
        for f in stage.update(bt, partitions[a:b].astype(np.int32), offsets[a:b]):
            ends = [
                index[(int(w.partition), int(w.last_offset))]
                for w in f.partitions
                if w.partition is not None and w.last_offset is not None
            ]
            out.append((max(ends) + 1 if ends else b, f))
    return Fed(out)


def shifted_stream(
    n: int, shift_at: int, shift: float, fields: list[str], seed: int
) -> dict[str, npt.NDArray[np.float64]]:
    """N(0, 1) columns whose mean moves by ``shift`` from index ``shift_at`` on."""
    rng = np.random.default_rng(seed)
    out = {}
    for f in fields:
        x = rng.normal(size=n)
        x[shift_at:] += shift
        out[f] = x
    return out


def round_robin(n: int, partitions: int) -> npt.NDArray[np.int32]:
    return (np.arange(n) % partitions).astype(np.int32)
