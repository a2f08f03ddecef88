"""Fleet health cost: 100,000 devices, 5 numeric fields, every entity detector on.

In one process, over the same JSON payloads (``monitor.dev.fleet_demo``: devices
reporting every ``--period`` seconds), in batches of ``--batch``:

* decode:        ``StreamDecoder.decode`` (msgspec to numpy columns)
* fleet:         ``FleetStage.update`` on the decoded batches (fold + evaluations)
* decode+fleet:  both, as the pipeline runs them
* with ``--broker``: consume+decode and consume+decode+fleet from the embedded broker

Then the memory per device (per field) and the cost of the worst-devices view
(``FleetStage.status``) and of one evaluation with 100,000 devices.

Usage: python bench/fleet.py [--devices 100000] [--minutes 10] [--batch 10000] [--broker]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import cpu_model


def _spec(devices: int) -> Any:
    from monitor.config.schema import parse_config
    from monitor.dev.fleet_demo import fleet_stream

    stream = fleet_stream(max_entities=devices)
    stream["max_entities"] = devices  # the decoder's entity vocabulary
    stream.pop("baseline")
    raw = {"kafka": {"bootstrap.servers": "127.0.0.1:1"}, "streams": [stream]}
    return parse_config(raw, env={}).streams[0]


def _payloads(devices: int, minutes: float, period: float) -> tuple[list[bytes], list[int]]:
    from monitor.dev.fleet_demo import Failure, FleetScenario

    failures = (
        Failure("silent", tuple(range(0, devices, 1000)), 300.0),
        Failure("stuck", tuple(range(1, devices, 1000)), 120.0),
        Failure("spike", tuple(range(2, devices, 1000)), 400.0),
    )
    scenario = FleetScenario(devices=devices, period=period, failures=failures)
    out: list[bytes] = []
    codes: list[int] = []
    for chunk in scenario.chunks(0.0, minutes * 60.0, 60.0):
        out.extend(chunk.payloads())
        codes.extend(chunk.codes.tolist())
    return out, codes


def _stage(spec: Any) -> Any:
    from monitor.pipeline.decode import StreamDecoder
    from monitor.pipeline.fleet import FleetStage

    return FleetStage(spec, StreamDecoder(spec), clock=lambda: 2e9)


def _run(
    spec: Any, payloads: list[bytes], batch: int, partitions: int, repeats: int = 2
) -> dict[str, Any]:
    """Best of ``repeats`` alternating passes per mode (the machine is shared)."""
    from monitor.pipeline.decode import StreamDecoder

    n = len(payloads)
    best: dict[str, float] = {}
    stage = None
    for _ in range(repeats):
        # decode only
        decoder = StreamDecoder(spec)
        t0 = time.perf_counter()
        batches = [decoder.decode(payloads[i : i + batch]) for i in range(0, n, batch)]
        best["decode"] = min(best.get("decode", 1e9), time.perf_counter() - t0)
        # fleet only, on those batches (the stage shares the decoder's vocabulary)
        stage = _stage(spec)
        stage.decoder = decoder
        parts = [(b.entity % partitions).astype(np.int32) for b in batches]
        t0 = time.perf_counter()
        for b, p in zip(batches, parts, strict=True):
            stage.update(b, p)
        best["fleet"] = min(best.get("fleet", 1e9), time.perf_counter() - t0)
        del batches
        # both, fresh
        decoder2 = StreamDecoder(spec)
        stage2 = _stage(spec)
        stage2.decoder = decoder2
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            b = decoder2.decode(payloads[i : i + batch])
            stage2.update(b, (b.entity % partitions).astype(np.int32))
        best["decode+fleet"] = min(best.get("decode+fleet", 1e9), time.perf_counter() - t0)
    return {**best, "stage": stage}


def _broker(
    spec: Any, payloads: list[bytes], codes: list[int], batch: int, partitions: int, args: Any
) -> dict[str, float]:
    from confluent_kafka import Consumer, Message, Producer, TopicPartition

    from connectors.embedded import EmbeddedBroker
    from monitor.dev.demo import create_topic
    from monitor.dev.producing import produce_waiting
    from monitor.pipeline.decode import StreamDecoder

    out: dict[str, float] = {}
    with EmbeddedBroker() as broker:
        topic = "bench.fleet"
        create_topic(broker.bootstrap, topic, partitions)
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 20})
        for i, value in enumerate(payloads):
            # keyed by device, as IoT topics are: a device stays in its partition
            produce_waiting(
                producer, topic, wait=0.01, value=value, partition=codes[i] % partitions
            )
        producer.flush(120)
        for mode in ("consume+decode", "consume+decode+fleet") * max(args.repeats - 1, 1):
            consumer = Consumer(
                {
                    "bootstrap.servers": broker.bootstrap,
                    "group.id": f"bench-{time.monotonic_ns()}",
                    "enable.auto.commit": False,
                    "fetch.queue.backoff.ms": 10,
                    "queued.min.messages": 200_000,
                }
            )
            consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
            decoder = StreamDecoder(spec)
            stage = _stage(spec)
            stage.decoder = decoder
            seen = 0
            t0 = time.perf_counter()
            deadline = time.monotonic() + 300
            while seen < len(payloads) and time.monotonic() < deadline:
                msgs = consumer.consume(batch, 1.0)
                if not msgs:
                    continue
                # as the service's source builds a batch (connectors.kafka._split_by_topic)
                values = list(map(Message.value, msgs))
                p = np.fromiter(map(Message.partition, msgs), dtype=np.int32, count=len(msgs))
                b = decoder.decode(values)
                if mode.endswith("fleet") and b.n:
                    stage.update(b, p[b.rows])
                seen += len(msgs)
            secs = time.perf_counter() - t0
            consumer.close()
            if secs < out.get(mode, 1e9):
                out[mode] = secs
                out[mode + ":events"] = seen
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--period", type=float, default=60.0)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--broker", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    spec = _spec(args.devices)
    t0 = time.perf_counter()
    payloads, codes = _payloads(args.devices, args.minutes, args.period)
    n = len(payloads)
    print(
        f"fleet bench: {args.devices:,} devices, 5 fields, {n:,} events "
        f"(generated in {time.perf_counter() - t0:.1f}s), batches of {args.batch:,}, "
        f"{args.partitions} partitions; cpu {cpu_model()}"
    )
    _run(spec, payloads[: min(n, 20_000)], args.batch, args.partitions, 1)  # numba warm-up
    res = _run(spec, payloads, args.batch, args.partitions, args.repeats)
    stage = res.pop("stage")
    print(f"\n{'mode':<22}{'events/s':>12}{'us/event':>10}")
    for mode, secs in res.items():
        print(f"{mode:<22}{n / secs:>12,.0f}{secs / n * 1e6:>10.2f}")
    ratio = res["decode"] / res["decode+fleet"]
    print(f"decode+fleet runs at {ratio:.0%} of decode alone")
    if args.broker:
        br = _broker(spec, payloads, codes, args.batch, args.partitions, args)
        for mode in ("consume+decode", "consume+decode+fleet"):
            ev = br[mode + ":events"]
            print(f"{mode:<22}{ev / br[mode]:>12,.0f}{br[mode] / ev * 1e6:>10.2f}")
        ratio = br["consume+decode"] / br["consume+decode+fleet"]
        print(f"consume+decode+fleet runs at {ratio:.0%} of consume+decode")

    from detectors.entity_table import EntityTable

    tracked = stage.tracked
    table_bytes = sum(t.nbytes() for t in stage.tables.values())
    base, per_field = EntityTable.bytes_per_entity(5)
    print(
        f"\nmemory: {tracked:,} devices tracked, arrays {table_bytes / 1e6:.1f} MB allocated = "
        f"{table_bytes / tracked:.0f} bytes/device (capacity included, {len(stage.tables)} "
        f"partition tables with code indexes); per slot {base} + {per_field} per field = "
        f"{base + 5 * per_field} bytes"
    )
    t0 = time.perf_counter()
    stage.evaluate()
    print(
        f"one evaluation of {tracked:,} devices (no condition changes): "
        f"{(time.perf_counter() - t0) * 1e3:.1f} ms"
    )
    # the view ranks the devices flagged at the last evaluation: flag 10% per condition
    rng = np.random.default_rng(0)
    for t in stage.tables.values():
        h = t.high_water
        for bit in range(len(stage.detectors)):
            t.status[:h] |= (rng.random(h) < 0.1).astype(np.uint8) << np.uint8(bit)
    for k in (20, 1000):
        t0 = time.perf_counter()
        reps = 5
        for _ in range(reps):
            st = stage.status(k)
        secs = (time.perf_counter() - t0) / reps
        size = len(json.dumps(st.to_dict()))
        print(
            f"status(k={k}): {secs * 1e3:.1f} ms with {tracked:,} devices, "
            f"{sum(dict(st.unhealthy).values()):,} device-conditions flagged, "
            f"JSON {size / 1e3:.0f} kB"
        )
    t0 = time.perf_counter()
    changes = len(stage.evaluate())
    print(
        f"one evaluation with {changes:,} condition changes (findings): "
        f"{(time.perf_counter() - t0) * 1e3:.0f} ms"
    )


if __name__ == "__main__":
    main()
