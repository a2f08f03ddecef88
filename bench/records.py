"""Cost of reading a fetch response's record batches (``connectors.records.read_records``).

Builds one partition's record set in memory (uncompressed v2 batches of ``--per-batch``
records, ``--value-bytes`` JSON-like values and short keys, ~5.6 MB by default: what
one partition answers a 4 MiB-per-partition fetch with), then times ``read_records``
over it: best of ``--repeat`` with the outputs dropped at once (the allocator hands the
same memory back), and a run that keeps every output alive (fresh memory each time:
page faults included, as in the service, where batches wait in the fetch queue).

Usage: python bench/records.py [--records 11000] [--value-bytes 500] [--repeat 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from bench.common import cpu_model
from connectors.records import RecordColumns, read_records
from tests.test_records import Batch, Rec, as_buf


def record_set(records: int, value_bytes: int, per_batch: int) -> np.ndarray:
    """Uncompressed v2 record batches holding ``records`` records (the tests' encoder,
    checked there against the protocol guide)."""
    value = (b'{"f0": 0.123456789, ' * (value_bytes // 20 + 1))[:value_bytes]
    batches = [
        Batch(
            base,
            tuple(Rec(b"key%d" % i, value, i, i) for i in range(min(per_batch, records - base))),
        )
        for base in range(0, records, per_batch)
    ]
    return as_buf(*batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=11_000)
    parser.add_argument("--value-bytes", type=int, default=500)
    parser.add_argument("--per-batch", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    buf = record_set(args.records, args.value_bytes, args.per_batch)
    first = read_records(buf, 0, buf.size, 0)  # compile or load the kernels
    assert len(first) == args.records
    del first
    best = float("inf")
    for _ in range(args.repeat):
        t = time.perf_counter()
        read_records(buf, 0, buf.size, 0)
        best = min(best, time.perf_counter() - t)
    kept: list[RecordColumns] = []
    t = time.perf_counter()
    for _ in range(args.repeat):
        kept.append(read_records(buf, 0, buf.size, 0))
    held = (time.perf_counter() - t) / args.repeat
    n, mb = args.records, buf.size / 1e6
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, Python {sys.version.split()[0]}")
    print(f"{n:,} records of {args.value_bytes} bytes in batches of {args.per_batch}: {mb:.1f} MB")
    print(f"{'case':34s} {'ms':>7s} {'ns/record':>10s} {'MB/s':>8s}")
    cases = (("outputs dropped (best)", best), ("outputs kept (fresh memory, mean)", held))
    for label, secs in cases:
        print(f"{label:34s} {secs * 1e3:7.2f} {secs / n * 1e9:10.0f} {mb / secs:8.0f}")


if __name__ == "__main__":
    main()
