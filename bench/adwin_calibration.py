"""ADWIN calibration: false changes per value and detection delay against ``delta``.

Run: ``.venv/bin/python bench/adwin_calibration.py [--streams 20] [--value-streams 4]``
(about 2 minutes on 2 cores). Every (mode, sub-window, ``min_window_length``, delta)
combination is run; ``--min-lens 5,10000`` (the default) compares ADWIN's default
``min_window_length`` with the service default's.

False alarms: independent stationary streams of ``--stream-len`` values (10M, one
field's share of the 10M-event requirement; the window grows over the whole stream,
as it does in the service), fed in batches of 10 000, one ``ADWIN`` per (mode,
delta) on the same draws. Sub-window mode runs on ``--streams`` streams, value mode
(about 4x the cost per value) on ``--value-streams`` of them. Each distribution is
standardised to mean 0, sd 1 (ADWIN is not scale-invariant: see its ``delta``):
N(0, 1); Gamma(shape 2), skewness 1.41; Student t with 3 df (infinite kurtosis).

Delay: ``--delay-seeds`` streams of 1M + U{0..999} stationary values (so the change
falls anywhere inside a sub-window), then fresh draws shifted by 0.25, 0.5 and
1.0 sd; each detector's state after the stationary part is cloned (state/restore)
for the three shifts. Delay = post-change values fed up to and including the value
at which the first change is reported (a false change before the shift resets the
window and is ignored here). Not found within ``--post`` values counts as a miss.

Seeds: stream s of distribution d uses ``default_rng([seed, d, s])``; delays use
``default_rng([seed, 100 + d, s])``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_model
from detectors.adwin import ADWIN

BATCH = 10_000
DISTS = ("normal", "gamma2", "t3")
DELTAS = (2e-3, 1e-4, 1e-5, 1e-6, 1e-7)
SHIFTS = (0.25, 0.5, 1.0)


SCALE = [1.0]  # sd of the streams (``--scale``); shifts stay in sd units


def draw(rng: np.random.Generator, dist: str, n: int) -> np.ndarray:
    """``n`` values of ``dist``, standardised to mean 0 and sd ``SCALE[0]``."""
    return SCALE[0] * _standard(rng, dist, n)


def _standard(rng: np.random.Generator, dist: str, n: int) -> np.ndarray:
    if dist == "normal":
        return rng.standard_normal(n)
    if dist == "gamma2":
        return np.asarray((rng.standard_gamma(2.0, n) - 2.0) / np.sqrt(2.0), dtype=np.float64)
    if dist == "t3":
        return np.asarray(rng.standard_t(3.0, n) / np.sqrt(3.0), dtype=np.float64)
    raise ValueError(dist)


def make(mode: str, subwindow: int, min_len: int, delta: float) -> ADWIN:
    return ADWIN(delta=delta, mode=mode, subwindow=subwindow, min_window_length=min_len)


def false_alarms(
    dist_i: int,
    configs: list[tuple[str, int, int]],
    deltas: tuple[float, ...],
    n_streams: dict[tuple[str, int, int], int],
    stream_len: int,
    seed: int,
) -> dict[tuple[str, int, int, float], tuple[int, int]]:
    """(mode, subwindow, min_len, delta) -> (false changes, values seen)."""
    res = {(*c, d): (0, 0) for c in configs for d in deltas}
    for stream in range(max(n_streams.values())):
        live = [c for c in configs if stream < n_streams[c]]
        dets = {(*c, d): make(*c, d) for c in live for d in deltas}
        rng = np.random.default_rng([seed, dist_i, stream])
        for start in range(0, stream_len, 1_000_000):
            x = draw(rng, DISTS[dist_i], min(1_000_000, stream_len - start))
            for i in range(0, x.size, BATCH):
                chunk = x[i : i + BATCH]
                for det in dets.values():
                    det.update(chunk)
        for key, det in dets.items():
            c, n = res[key]
            res[key] = (c + det.n_detections, n + stream_len)
    return res


def delays(
    dist_i: int,
    configs: list[tuple[str, int, int]],
    deltas: tuple[float, ...],
    seeds: int,
    pre: int,
    post: int,
    seed: int,
) -> dict[tuple[str, int, int, float, float], list[float]]:
    """(mode, subwindow, min_len, delta, shift) -> delays (inf for a miss), one per seed."""
    res: dict[tuple[str, int, int, float, float], list[float]] = {}
    for s in range(seeds):
        rng = np.random.default_rng([seed, 100 + dist_i, s])
        n_pre = pre + int(rng.integers(0, 1000))
        x = draw(rng, DISTS[dist_i], n_pre)
        dets = {(*c, d): make(*c, d) for c in configs for d in deltas}
        for i in range(0, n_pre, BATCH):
            for det in dets.values():
                det.update(x[i : i + BATCH])
        states = {k: det.state() for k, det in dets.items()}
        y = draw(rng, DISTS[dist_i], post)
        for shift in SHIFTS:
            for key, st in states.items():
                det = make(*key)
                det.restore(st)
                found = float("inf")
                for i in range(0, post, BATCH):
                    det.update(y[i : i + BATCH] + shift * SCALE[0])
                    if det.drift_detected:
                        found = float(i + det.last_detections[0] + 1)
                        break
                res.setdefault((*key, shift), []).append(found)
    return res


def fmt_delay(v: list[float]) -> str:
    a = np.asarray(v)
    miss = int(np.isinf(a).sum())
    f = a[np.isfinite(a)]
    if f.size == 0:
        return "miss"
    txt = f"{np.median(f):.0f}/{f.max():.0f}"
    return txt + (f" ({miss} miss)" if miss else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--streams", type=int, default=20, help="sub-window streams per dist")
    ap.add_argument("--value-streams", type=int, default=4, help="value-mode streams per dist")
    ap.add_argument("--stream-len", type=int, default=10_000_000)
    ap.add_argument("--delay-seeds", type=int, default=20)
    ap.add_argument("--pre", type=int, default=1_000_000)
    ap.add_argument("--post", type=int, default=100_000)
    ap.add_argument("--subwindows", default="1000", help="comma-separated sub-window sizes")
    ap.add_argument("--min-lens", default="5,10000", help="comma-separated min_window_length")
    ap.add_argument("--no-value", action="store_true", help="skip value mode")
    ap.add_argument("--deltas", default=",".join(str(d) for d in DELTAS))
    ap.add_argument("--dists", default=",".join(DISTS))
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every value (sd)")
    ap.add_argument("--skip-delays", action="store_true")
    args = ap.parse_args()

    deltas = tuple(float(d) for d in args.deltas.split(","))
    SCALE[0] = args.scale
    min_lens = [int(m) for m in args.min_lens.split(",")]
    configs = [("subwindow", int(w), m) for w in args.subwindows.split(",") for m in min_lens]
    n_streams = {c: args.streams for c in configs}
    if not args.no_value:
        configs += [("value", 1, m) for m in min_lens]
        n_streams.update({("value", 1, m): args.value_streams for m in min_lens})
    configs = [c for c in configs if n_streams[c] > 0]

    print(
        f"# {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, nproc={os.cpu_count()}, "
        f"CPU {cpu_model()!r}, Python {platform.python_version()}, numpy {np.__version__}"
    )
    print(
        f"# sd {args.scale:g}; stream length {args.stream_len:,}, batches of {BATCH:,}, "
        f"seed {args.seed}; "
        f"delay: pre {args.pre:,}+U{{0..999}}, post <= {args.post:,}, "
        f"{args.delay_seeds} seeds; delay cells: median/max values after the change"
    )
    make("subwindow", 1000, 5, 0.002).update(np.zeros(2000))  # compile / cache load
    head = (
        f"{'dist':7} {'mode':15} {'min_len':>7} {'delta':>7} {'values':>13} {'changes':>7} "
        f"{'per value':>9} {'95% UB':>9}  {'0.25 sd':>14} {'0.5 sd':>14} {'1.0 sd':>14}"
    )
    print(head)
    print("-" * len(head))
    for dist in args.dists.split(","):
        d_i = DISTS.index(dist)
        t0 = time.perf_counter()
        fa = false_alarms(d_i, configs, deltas, n_streams, args.stream_len, args.seed)
        dl = (
            {}
            if args.skip_delays
            else delays(d_i, configs, deltas, args.delay_seeds, args.pre, args.post, args.seed)
        )
        for mode, w, m in configs:
            for delta in deltas:
                c, n = fa[(mode, w, m, delta)]
                ub = (3.0 if c == 0 else c + 2.0 * np.sqrt(c) + 2.0) / n  # ~95% Poisson
                label = "value" if mode == "value" else f"subwindow={w}"
                cells = ["" if not dl else fmt_delay(dl[(mode, w, m, delta, s)]) for s in SHIFTS]
                print(
                    f"{dist:7} {label:15} {m:7d} {delta:7.0e} {n:13,} {c:7d} {c / n:9.2e} "
                    f"{ub:9.2e}  {cells[0]:>14} {cells[1]:>14} {cells[2]:>14}"
                )
        print(f"# {dist}: {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
