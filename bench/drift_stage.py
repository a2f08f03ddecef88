"""Cost of the drift stage alone: µs of CPU per event for F float fields.

Feeds the stage in process (no broker, no decode) with N(0, 1) columns in batches
of B, each a run of rows per partition of P as the Kafka source hands them over
(``--layout one``: each batch from one partition, as the direct fetch path mostly
hands them over at a few partitions; ``interleaved``: rows round-robin); the
default detectors of a float field (ks, psi, adwin, data_quality) with a baseline
carrying quality rates; window 10,000 / step 1,000. A first pass warms up (numba,
scipy); then ``--repeat`` passes on fresh stages are timed, each with
``time.process_time`` (CPU of this process, so other load on the machine inflates
it less than wall time) and wall time; the table gives the best pass of each (the
least disturbed by other jobs).

Usage: python bench/drift_stage.py [--fields 20] [--events 200000] [--repeat 3]
       [--partitions 1,4] [--batches 1000,10000] [--layout runs|one|interleaved]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from detectors.baseline import Baseline, QualityBaseline, build_numeric
from monitor.config.schema import parse_config
from monitor.pipeline.decode import Batch, StreamDecoder
from monitor.pipeline.drift import DriftStage


def _stage(fields: list[str], partitions: int) -> DriftStage:
    config = parse_config(
        {
            "kafka": {"bootstrap.servers": "127.0.0.1:9"},
            "group": "bench",
            "metrics": {"enabled": False},
            "dead_letter_topic": "dlq",
            "streams": [
                {
                    "name": "s",
                    "topic": "t",
                    "fields": {f: {"type": "float"} for f in fields},
                    "baseline": {"first_events": 1},
                    "window": {"events": 10_000, "step": 1_000},
                }
            ],
        },
        env={},
    )
    spec = config.streams[0]
    rng = np.random.default_rng(0)
    baseline = Baseline(
        id="bench",
        created_at="2026-11-29",
        source="bench",
        fields={f: build_numeric(rng.normal(size=100_000)) for f in fields},
        quality={f: QualityBaseline(np.array([100_000, 0, 0, 0, 0, 0])) for f in fields},
    )
    stage = DriftStage(spec, StreamDecoder(spec), baseline)
    stage.set_partition_count(partitions)
    stage.compact_clean = True  # as the service runs it (its transaction reads rows)
    return stage


def _run(
    stage: DriftStage,
    cols: dict[str, np.ndarray],
    partitions: int,
    batch: int,
    layout: str = "runs",
) -> tuple[float, float]:
    """(CPU, wall) µs per event of feeding ``cols`` to ``stage``."""
    n = len(next(iter(cols.values())))
    if layout == "interleaved":  # rows round-robin over the partitions
        parts = (np.arange(n) % partitions).astype(np.int32)
    elif layout == "one":  # each batch from one partition, the partitions in turn
        parts = (np.arange(n) // batch % partitions).astype(np.int32)
    else:  # each batch a run of records per partition, as the Kafka source hands them over
        within = np.arange(n) % batch
        parts = (within * partitions // batch).astype(np.int32)
    offsets = np.zeros(n, dtype=np.int64)
    for p in range(partitions):
        at = np.flatnonzero(parts == p)
        offsets[at] = np.arange(at.size)
    ones = np.ones(batch, bool)
    # Each batch's columns are rows of one matrix, as the decoder hands them out.
    names = list(cols)
    matrices = [np.stack([cols[k][a : a + batch] for k in names]) for a in range(0, n, batch)]
    t, w = time.process_time(), time.perf_counter()
    for a, matrix in zip(range(0, n, batch), matrices, strict=True):
        b = a + batch
        bt = Batch(
            stream="s",
            n_input=batch,
            rows=np.arange(batch, dtype=np.int64),
            columns={k: matrix[i] for i, k in enumerate(names)},
            valid={k: ones for k in cols},
        )
        stage.update(bt, parts[a:b], offsets[a:b])
        stage.take_verdicts()
    return (time.process_time() - t) / n * 1e6, (time.perf_counter() - w) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fields", type=int, default=20)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--partitions", default="1,4")
    ap.add_argument("--batches", default="1000,10000")
    ap.add_argument(
        "--layout",
        choices=("runs", "one", "interleaved"),
        default="runs",
        help="a batch's rows: a run per partition (default), all of one partition "
        "(the partitions in turn), or round-robin over the partitions",
    )
    args = ap.parse_args()
    fields = [f"f{i}" for i in range(args.fields)]
    rng = np.random.default_rng(1)
    cols = {f: rng.normal(size=args.events) for f in fields}
    head = ("partitions", "batch", "cpu us/event", "wall us/event", "cpu ns/value")
    print("{:>10} {:>7} {:>13} {:>14} {:>13}".format(*head))
    for partitions in map(int, args.partitions.split(",")):
        for batch in map(int, args.batches.split(",")):
            _run(_stage(fields, partitions), cols, partitions, batch, args.layout)  # warm-up
            runs = [
                _run(_stage(fields, partitions), cols, partitions, batch, args.layout)
                for _ in range(args.repeat)
            ]
            cpu, wall = min(r[0] for r in runs), min(r[1] for r in runs)
            print(
                f"{partitions:>10} {batch:>7} {cpu:>13.2f} {wall:>14.2f} "
                f"{cpu * 1e3 / args.fields:>13.0f}"
            )


if __name__ == "__main__":
    main()
