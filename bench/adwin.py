"""ADWIN: our numba kernel against river.drift.ADWIN, side by side, same inputs.

Run: ``.venv/bin/python bench/adwin.py [--values N] [--repeat R]``. Prints the
machine, the first call's time (numba compile or cache load, not counted below),
a per-value table (updates/s, ns/value, speedup, same detections?), and the
service's shape: 20 fields in batches, Python overhead included.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_model
from detectors.adwin import ADWIN, _adwin_batch


def streams(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2024)
    stationary = rng.normal(0.0, 1.0, n)
    # Drifting: a new mean every 50 000 values plus a slow ramp, so ADWIN cuts often.
    means = rng.normal(0.0, 1.0, n // 50_000 + 1).repeat(50_000)[:n]
    drifting = rng.normal(means + np.linspace(0.0, 3.0, n), 1.0)
    return {"stationary": stationary, "drifting": drifting}


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def ours_detections(xs: np.ndarray, **kwargs: object) -> list[int]:
    det = ADWIN(**kwargs)  # type: ignore[arg-type]
    det.update(xs)
    return [int(i) for i in det.last_detections]


def river_detections(xs: np.ndarray) -> list[int]:
    from river import drift

    det = drift.ADWIN()
    found = []
    for i, x in enumerate(xs.tolist()):
        det.update(x)
        if det.drift_detected:
            found.append(i)
    return found


def river_update_only(values: list[float]) -> None:
    from river import drift

    det = drift.ADWIN()
    update = det.update
    for x in values:
        update(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--values", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fields", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()

    import river

    print(f"date: {dt.date.today().isoformat()}")
    print(f"machine: nproc={os.cpu_count()}, cpu={cpu_model()}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, river {river.__version__}")
    t0 = time.perf_counter()
    ADWIN().update(np.zeros(64))
    first = time.perf_counter() - t0
    how = "loaded from numba's cache" if _adwin_batch.stats.cache_hits else "compiled"
    print(f"first call, not counted below: {first:.3f} s (kernel {how})")
    print()

    n = args.values
    header = (
        f"{'stream':<11} {'mode':<17} {'ours upd/s':>12} {'river upd/s':>12} "
        f"{'ours ns/v':>10} {'river ns/v':>10} {'speedup':>8}  same detections"
    )
    print(f"per value, one detector, {n} values in one batch (best of {args.repeat})")
    print(header)
    print("-" * len(header))
    for name, xs in streams(n).items():
        values = xs.tolist()
        river_s = best_of(max(1, args.repeat - 1), lambda v=values: river_update_only(v))
        same = ours_detections(xs) == river_detections(xs)
        for mode in ("value", "subwindow"):
            ours_s = best_of(args.repeat, lambda x=xs, m=mode: ADWIN(mode=m).update(x))
            check = ("yes" if same else "NO") if mode == "value" else "n/a"
            label = mode if mode == "value" else "subwindow=1000"
            print(
                f"{name:<11} {label:<17} {n / ours_s:>12,.0f} {n / river_s:>12,.0f} "
                f"{ours_s / n * 1e9:>10.1f} {river_s / n * 1e9:>10.1f} "
                f"{river_s / ours_s:>7.1f}x  {check}"
            )
    print()

    fields, batch = args.fields, args.batch
    print(
        f"service shape: {fields} fields, batches of {batch} events, update() per field "
        f"and batch (Python overhead and Finding included), {n} events"
    )
    print(f"{'stream':<11} {'mode':<17} {'ns/event (all fields)':>22} {'ns/value':>9}")
    for name, xs in streams(n).items():
        for mode in ("value", "subwindow"):

            def run(x: np.ndarray = xs, m: str = mode) -> None:
                dets = [ADWIN(mode=m, subject=f"f{j}") for j in range(fields)]
                for start in range(0, n, batch):
                    chunk = x[start : start + batch]
                    for det in dets:
                        det.update(chunk)

            secs = best_of(args.repeat, run)
            label = mode if mode == "value" else "subwindow=1000"
            print(f"{name:<11} {label:<17} {secs / n * 1e9:>22.1f} {secs / n / fields * 1e9:>9.1f}")


if __name__ == "__main__":
    main()
