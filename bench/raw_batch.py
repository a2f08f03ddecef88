"""Cost of building a ``RawBatch`` from consumed messages, field by field.

``connectors.kafka`` pulls every field of a batch out with ``map`` over the client's
C methods; this prints ns per event for each (best of ``--repeat`` over a batch of
``--batch`` messages built in memory, no broker), and for the whole split.
Usage: python bench/raw_batch.py [--batch 10000] [--repeat 50]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
from confluent_kafka import Message

from bench.common import cpu_model
from connectors.kafka import _split_by_topic


def _best(f: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    n = args.batch
    msgs = [
        Message(
            topic="t",
            partition=i % 4,
            offset=i,
            key=b"dev-%d" % (i % 100),
            value=b"x" * 500,
            timestamp=(1, 1_790_000_000_000 + i),
        )
        for i in range(n)
    ]
    rows: list[tuple[str, Callable[[], Any]]] = [
        ("topics (split check)", lambda: list(map(Message.topic, msgs))),
        ("values", lambda: list(map(Message.value, msgs))),
        ("partitions", lambda: np.fromiter(map(Message.partition, msgs), np.int32, count=n)),
        ("offsets", lambda: np.fromiter(map(Message.offset, msgs), np.int64, count=n)),
        ("keys (if all were read)", lambda: list(map(Message.key, msgs))),
        ("timestamps (if all were read)", lambda: [m.timestamp()[1] for m in msgs]),
        ("whole RawBatch split", lambda: _split_by_topic(msgs)),
    ]
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}; batch of {n:,} messages")
    print(f"{'field':30s} {'ns/event':>9s}")
    for name, f in rows:
        print(f"{name:30s} {_best(f, args.repeat) / n * 1e9:9.1f}")


if __name__ == "__main__":
    main()
