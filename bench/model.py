"""Model monitoring costs: the label join, the model stage per event, end to end.

1. join:   ``detectors.label_join.LabelJoin`` with 10^5 pending predictions; rounds of
           10,000 new predictions + 10,000 labels (for predictions 10^5 older), plus
           the request-id hashing (10,000 string ids).
2. memory: table bytes per pending prediction (at capacity, and with 10^5 pending in a
           table sized for ``max_pending`` 10^5) and checkpoint bytes per pending.
3. stage:  ``StreamPipeline.process`` on inference and label batches of 10,000, with no
           stage, with the model stage only, and with drift + model: the model stage's
           cost per event is the difference.
4. broker (``--broker``): the service (runner, both topics, 2 partitions) on the
           embedded broker: N predictions + N labels, plus 10^5 predictions whose labels
           never come (so 10^5 stay pending); events + labels consumed per second.

Usage: python bench/model.py [--rounds 20] [--broker] [--events 200000]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import cpu_model

PENDING = 100_000
BATCH = 10_000


def bench_join(rounds: int) -> list[tuple[str, str]]:
    from detectors.label_join import LabelJoin, hash_ids

    ids = [f"req-{i}" for i in range(PENDING + rounds * BATCH)]
    hash_ids(ids[:10])  # compile outside the clock
    t0 = time.perf_counter()
    keys = hash_ids(ids)
    hash_us = 1e6 * (time.perf_counter() - t0) / len(ids)
    rng = np.random.default_rng(0)
    score = rng.uniform(0, 1, keys.size)
    times = np.arange(keys.size, dtype=np.float64)
    join = LabelJoin(capacity=2 * PENDING, max_delay=1e9)
    join.add_predictions(keys[:PENDING], times[:PENDING], score[:PENDING])
    join.add_predictions(keys[:10], times[:10], score[:10])  # compile outside the clock
    join.add_labels(keys[:0], times[:0], np.empty(0))
    t0 = time.perf_counter()
    joined = 0
    for r in range(rounds):
        new = slice(PENDING + r * BATCH, PENDING + (r + 1) * BATCH)
        old = slice(r * BATCH, (r + 1) * BATCH)
        join.add_predictions(keys[new], times[new], score[new])
        joined += join.add_labels(keys[old], times[new], np.ones(BATCH)).n
        join.expire()
    secs = time.perf_counter() - t0
    events = 2 * rounds * BATCH
    assert joined == rounds * BATCH, joined
    return [
        ("join: pending predictions during the run", f"{join.pending:,}"),
        ("join: predictions + labels per second", f"{events / secs:,.0f}"),
        ("join: us per prediction or label (table + expiry)", f"{1e6 * secs / events:.3f}"),
        ("join: us per request id hashed (str ids)", f"{hash_us:.3f}"),
    ]


def bench_memory() -> list[tuple[str, str]]:
    from detectors.label_join import LabelJoin, hash_ids
    from monitor.runtime.state import encode_state

    join = LabelJoin(capacity=PENDING)
    keys = hash_ids([f"req-{i}" for i in range(PENDING)])
    rng = np.random.default_rng(1)
    join.add_predictions(keys, np.arange(PENDING, dtype=np.float64), rng.uniform(0, 1, PENDING))
    blob = encode_state(join.state())
    return [
        ("memory: table bytes per row of capacity", f"{join.nbytes / join.capacity:.1f}"),
        ("memory: table bytes per pending (10^5 pending, max_pending 10^5)",
         f"{join.nbytes / join.pending:.1f}"),
        ("memory: checkpoint bytes per pending (msgpack+zlib)", f"{len(blob) / join.pending:.1f}"),
    ]  # fmt: skip


def _stream(tmp: Path, drift: bool) -> dict[str, Any]:
    from monitor.dev.model_synthetic import MODEL_STREAM, reference_rows

    ref = tmp / "ref.jsonl"
    if not ref.exists():
        ref.write_bytes(b"\n".join(reference_rows(20_000, seed=5)) + b"\n")
    stream = copy.deepcopy(MODEL_STREAM)
    stream["model"]["reference"] = {"file": str(ref)}
    stream["model"]["labels"]["max_pending"] = 2 * PENDING
    if not drift:
        for spec in stream["fields"].values():
            spec["detectors"] = []
    return stream


def bench_stage(tmp: Path, partitions: int = 1) -> list[tuple[str, str]]:
    from connectors.kafka import RawBatch
    from monitor.config.schema import parse_config
    from monitor.dev.model_synthetic import generate_model_events
    from monitor.metrics import Metrics
    from monitor.pipeline.model import ModelStage
    from monitor.pipeline.stage import registered_stages
    from monitor.pipeline.stream import StreamPipeline

    n = 200_000
    ev = generate_model_events(n, seed=3, label_delay=PENDING / 100.0, missing=0.0, duplicated=0.0)

    label_ids = np.array([int(k.rsplit(b"-", 1)[1]) for k in ev.label_keys], np.int64)
    nexts: dict[tuple[str, int], int] = {}

    def raw(topic: str, values: Sequence[bytes | None], start: int) -> RawBatch:
        # request i is on partition i % partitions on both topics
        ids = (
            np.arange(start, start + len(values))
            if "inference" in topic
            else label_ids[start : start + len(values)]
        )
        parts = (ids % partitions).astype(np.int32)
        offsets = np.empty(len(values), np.int64)
        for p in range(partitions):
            sel = parts == p
            first = nexts.get((topic, p), 0)
            offsets[sel] = first + np.arange(int(sel.sum()))
            nexts[(topic, p)] = first + int(sel.sum())
        return RawBatch(
            topic=topic,
            values=list(values),
            partitions=parts,
            offsets=offsets,
            keys=(_keys := [None] * len(values)),
            timestamps=[1_700_000_000_000] * len(_keys),
        )

    rows = []
    base: dict[str, float] = {}
    for mode in ("no stage", "model", "drift + model"):
        stream = _stream(tmp, drift=mode == "drift + model")
        config = parse_config({"kafka": {"bootstrap.servers": "x:1"}, "streams": [stream]}, env={})
        pipeline = StreamPipeline(config.streams[0], Metrics(), "dlq")
        if mode != "no stage":
            pipeline.stages.extend(registered_stages(pipeline))
        pipeline.set_partition_count(partitions)
        nexts.clear()
        # 10^5 predictions ahead of their labels, then both topics in step
        for i in range(0, PENDING, BATCH):
            pipeline.process(raw("ml.loans.inference", ev.inference[i : i + BATCH], i))
        secs = {"inference": 0.0, "labels": 0.0}
        cpu = {"inference": 0.0, "labels": 0.0}
        count = {"inference": 0, "labels": 0}
        for i in range(PENDING, n, BATCH):
            j = i - PENDING
            for topic, kind, values, start in (
                ("ml.loans.inference", "inference", ev.inference[i : i + BATCH], i),
                ("ml.loans.labels", "labels", ev.labels[j : j + BATCH], j),
            ):
                if mode == "no stage" and kind == "labels":
                    continue
                t0, c0 = time.perf_counter(), time.thread_time()
                pipeline.process(raw(topic, values, start))
                secs[kind] += time.perf_counter() - t0
                cpu[kind] += time.thread_time() - c0
                count[kind] += len(values)
        per_inf = 1e6 * secs["inference"] / count["inference"]
        cpu_inf = 1e6 * cpu["inference"] / count["inference"]
        if mode == "no stage":
            base["inference"] = per_inf
            base["cpu"] = cpu_inf
            rows.append(("stage: decode + checks only, us per inference event", f"{per_inf:.2f}"))
            rows.append(
                ("stage: decode + checks only, CPU us per inference event", f"{cpu_inf:.2f}")
            )
            continue
        per_lab = 1e6 * secs["labels"] / count["labels"]
        cpu_lab = 1e6 * cpu["labels"] / count["labels"]
        stage = pipeline.stages[0]
        assert isinstance(stage, ModelStage)
        rows.append(
            (
                f"stage ({mode}): us per inference event over decode",
                f"{per_inf - base['inference']:.2f}",
            )
        )
        rows.append((f"stage ({mode}): us per label event (decode + join)", f"{per_lab:.2f}"))
        rows.append(
            (
                f"stage ({mode}): CPU us per inference event over decode",
                f"{cpu_inf - base['cpu']:.2f}",
            )
        )
        rows.append(
            (f"stage ({mode}): CPU us per label event (decode + join + verdicts)", f"{cpu_lab:.2f}")
        )
        rows.append((f"stage ({mode}): joined", f"{stage.join_counts()['joined']:,}"))
    return rows


def bench_broker(tmp: Path, events: int) -> list[tuple[str, str]]:
    from confluent_kafka import Producer
    from prometheus_client import CollectorRegistry

    from connectors.embedded import EmbeddedBroker
    from monitor.config.schema import parse_config
    from monitor.dev.demo import create_topic
    from monitor.dev.model_synthetic import generate_model_events
    from monitor.dev.producing import produce_waiting
    from monitor.pipeline.model import ModelStage
    from monitor.runtime.service import Service

    ev = generate_model_events(events + PENDING, seed=4, missing=0.0, duplicated=0.0)
    labels = [(v, k) for v, k in zip(ev.labels, ev.label_keys, strict=True)]
    labels = labels[:events]  # the last 10^5 predictions never get a label
    with EmbeddedBroker() as broker:
        for topic in ("ml.loans.inference", "ml.loans.labels"):
            create_topic(broker.bootstrap, topic, 2)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20})
        for topic, pairs in (
            ("ml.loans.inference", zip(ev.inference, ev.inference_keys, strict=True)),
            ("ml.loans.labels", iter(labels)),
        ):
            for value, key in pairs:
                produce_waiting(producer, topic, wait=0.01, value=value, key=key)
        producer.flush(120)
        stream = _stream(tmp, drift=False)
        config = parse_config(
            {
                "kafka": {"bootstrap.servers": broker.bootstrap, "session.timeout.ms": 6000},
                "group": f"bench-model-{time.monotonic_ns()}",
                "metrics": {"enabled": False},
                "state": {"enabled": False},
                "source": {"max_batch_events": BATCH},
                "streams": [stream],
            },
            env={},
        )
        service = Service(config, registry=CollectorRegistry())
        total = len(ev.inference) + len(labels)
        marks: dict[str, float] = {}

        stage = service.runner.pipelines["ml.loans.inference"].stages[0]
        assert isinstance(stage, ModelStage)

        def until(stats: Any) -> bool:
            if "start" not in marks and stats.events:
                marks["start"], marks["first"] = time.perf_counter(), stats.events
            if stats.events >= total:  # read before close() drops the partitions
                marks["end"] = time.perf_counter()
                marks["pending"] = sum(p.join.pending for p in stage._parts.values())
                marks["joined"] = stage.join_counts()["joined"]
                return True
            return False

        stats = service.run(max_seconds=300, until=until)
    rate = (stats.events - marks["first"]) / (marks["end"] - marks["start"])
    return [
        ("broker: events + labels consumed", f"{stats.events:,}"),
        ("broker: pending predictions at the end", f"{int(marks['pending']):,}"),
        ("broker: joined", f"{int(marks['joined']):,}"),
        ("broker: events + labels per second (service, model stage only)", f"{rate:,.0f}"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--broker", action="store_true")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=1, help="stage part: partitions")
    args = parser.parse_args()
    rows = bench_join(args.rounds) + bench_memory()
    with tempfile.TemporaryDirectory() as tmp:
        rows += bench_stage(Path(tmp), args.partitions)
        if args.broker:
            rows += bench_broker(Path(tmp), args.events)
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value:>14}")


if __name__ == "__main__":
    main()
