"""Drift detectors: per-batch cost, false alarms over 10M events x 20 fields, delay.

Run: ``.venv/bin/python bench/detectors.py`` (about a minute on 2 cores). Prints
markdown tables for bench/RESULTS.md.

False alarms are measured by simulation: under a stationary stream the fine-bin
counts of a 1,000-event sub-window are exactly Multinomial(1000, p) with ``p`` the
true mass of each baseline bin, so 10M events are 10,000 multinomial draws per
field; windows are rolling sums of 10 sub-windows, and the detectors' own statistic
functions and thresholds (``ks_from_counts``, ``critical_d``, ``psi_from_counts``,
``critical_psi``) give the verdicts: the same numbers ``update`` would produce with
one batch per step.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path and its name would
# shadow the `detectors` package: put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from detectors.baseline import build_categorical, build_numeric  # noqa: E402
from detectors.categorical import ChiSquare  # noqa: E402
from detectors.ks import KS, ks_from_counts  # noqa: E402
from detectors.psi import PSI, psi_from_counts  # noqa: E402

FIELDS = 20
BASELINE_N = 100_000


def _cost(batch: int, total: int = 400_000) -> list[tuple[str, float, float]]:
    rng = np.random.default_rng(0)
    bases = [build_numeric(rng.normal(0, 1, BASELINE_N)) for _ in range(FIELDS)]
    cat = build_categorical({f"c{i}": 100 + i for i in range(12)})
    data = [rng.normal(0, 1, total) for _ in range(FIELDS)]
    codes = rng.integers(0, 13, total)
    rows: list[tuple[str, float, float]] = []

    def timed(label: str, make: Any, feed: Any) -> None:
        dets = [make(i) for i in range(FIELDS)]
        for i, d in enumerate(dets):  # warm the windows
            feed(d, i, 0, 10_000)
        t0 = time.perf_counter()
        n_batches = 0
        for s in range(10_000, total, batch):
            for i, d in enumerate(dets):
                feed(d, i, s, batch)
            n_batches += 1
        dt = time.perf_counter() - t0
        rows.append((label, dt / (n_batches * batch * FIELDS) * 1e6, dt / n_batches * 1e3))

    timed("KS", lambda i: KS(bases[i]), lambda d, i, s, b: d.update(data[i][s : s + b]))
    timed("PSI", lambda i: PSI(bases[i]), lambda d, i, s, b: d.update(data[i][s : s + b]))

    def both(i: int) -> tuple[KS, PSI]:
        return KS(bases[i]), PSI(bases[i])

    def feed_both(d: tuple[KS, PSI], i: int, s: int, b: int) -> None:
        bins = bases[i].bin_index(data[i][s : s + b])
        d[0].update_bins(bins)
        d[1].update_bins(bins)

    timed("KS+PSI (shared binning)", both, feed_both)
    timed(
        "chi2 (12 categories)",
        lambda i: ChiSquare(cat),
        lambda d, i, s, b: d.update(codes[s : s + b]),
    )
    if importlib.util.find_spec("detectors.adwin") is not None:
        from detectors.adwin import ADWIN

        timed(
            "ADWIN (value mode)", lambda i: ADWIN(), lambda d, i, s, b: d.update(data[i][s : s + b])
        )
        timed(
            "ADWIN (subwindow mode)",
            lambda i: ADWIN(mode="subwindow"),
            lambda d, i, s, b: d.update(data[i][s : s + b]),
        )
    return rows


def _simulate_windows(
    p: np.ndarray, rng: np.random.Generator, n_sub: int, step: int, ring: int
) -> np.ndarray:
    sub = rng.multinomial(step, p, size=n_sub)
    csum = np.cumsum(sub, axis=0)
    win = csum[ring - 1 :].copy()
    win[1:] -= csum[:-ring]
    return win


def false_alarms(events: int = 10_000_000, seed: int = 1) -> dict[str, Any]:
    """Stationary N(0, 1): verdicts of KS and PSI (defaults) over 20 fields."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"ks": 0, "psi": 0, "tests": 0, "ks_headroom": 0.0, "psi_headroom": 0.0}
    alphas = [1e-3, 1e-4, 1e-5]
    ks_stat: list[np.ndarray] = []
    psi_stat: list[np.ndarray] = []
    ks_dets: list[KS] = []
    psi_dets: list[PSI] = []
    for _ in range(FIELDS):
        base = build_numeric(rng.normal(0, 1, BASELINE_N))
        ks, psi = KS(base), PSI(base)
        p = np.diff(stats.norm.cdf(base.edges))
        p /= p.sum()
        cdf = np.cumsum(base.counts[:-1]) / base.n
        d_all, psi_all = [], []
        for _chunk in range(events // 2_000_000):
            win = _simulate_windows(p, rng, 2_000 + 9, 1_000, 10)
            d_all.append(ks_from_counts(cdf, win))
            psi_all.append(psi_from_counts(psi.baseline_coarse_counts, psi.coarsen(win)))
        d, ps = np.concatenate(d_all), np.concatenate(psi_all)
        m = 10_000
        ks_thr = max(ks.d_min, ks.critical_d(m))
        psi_thr = max(psi.psi_min, psi.critical_psi(m))
        out["ks"] += int((d >= ks_thr).sum())
        out["psi"] += int((ps >= psi_thr).sum())
        out["tests"] += int(d.size)
        out["ks_headroom"] = max(out["ks_headroom"], float(d.max() / ks_thr))
        out["psi_headroom"] = max(out["psi_headroom"], float(ps.max() / psi_thr))
        ks_stat.append(d)
        psi_stat.append(ps)
        ks_dets.append(ks)
        psi_dets.append(psi)
    # Calibration: significance only (no effect floor) at larger alphas.
    from scipy import special

    cal = []
    n_eff = BASELINE_N * 10_000 / (BASELINE_N + 10_000)
    for a in alphas:
        ks_fa = sum(int((d >= special.kolmogi(a) / np.sqrt(n_eff)).sum()) for d in ks_stat)
        dof = psi_dets[0]._dof
        psi_fa = sum(int((ps >= stats.chi2.isf(a, dof) / n_eff).sum()) for ps in psi_stat)
        cal.append((a, ks_fa, psi_fa))
    out["calibration"] = cal
    return out


def delays(shift: float, seeds: int = 20, horizon: int = 20_000) -> dict[str, list[int | None]]:
    """Events from the start of a mean shift (in sd) to the first drift verdict."""
    res: dict[str, list[int | None]] = {"ks": [], "psi": []}
    for seed in range(seeds):
        r = np.random.default_rng(500 + seed)
        base = build_numeric(r.normal(0, 1, BASELINE_N))
        for name, det in (("ks", KS(base)), ("psi", PSI(base))):
            calm, moved = r.normal(0, 1, 20_000), r.normal(shift, 1, horizon)
            for i in range(0, calm.size, 1_000):
                det.update(calm[i : i + 1_000])
            got = None
            for i in range(0, horizon, 1_000):
                if any(f.drift for f in det.update(moved[i : i + 1_000])):
                    got = i + 1_000
                    break
            res[name].append(got)
    return res


def main() -> None:
    print("## Per-batch cost, 20 fields (µs per field-event, ms per batch of all 20 fields)\n")
    print("| detector | batch | µs/event | ms/batch |")
    print("|---|---:|---:|---:|")
    for batch in (1_000, 10_000, 100_000):
        for label, us, ms in _cost(batch):
            print(f"| {label} | {batch:,} | {us:.3f} | {ms:.2f} |")
    print()
    t0 = time.perf_counter()
    fa = false_alarms()
    print(
        f"## False alarms, stationary N(0,1), 20 fields x 10M events, KS + PSI defaults "
        f"({time.perf_counter() - t0:.0f} s)\n"
    )
    print(f"- evaluations per detector type: {fa['tests']:,} (one per 1,000-event step)")
    print(f"- KS drift verdicts: {fa['ks']}, max D / threshold: {fa['ks_headroom']:.2f}")
    print(f"- PSI drift verdicts: {fa['psi']}, max PSI / threshold: {fa['psi_headroom']:.2f}")
    print("\nCalibration (significance only, no effect floor): false verdicts vs Bonferroni\n")
    print("| alpha per test | expected (alpha x tests) | KS | PSI |")
    print("|---:|---:|---:|---:|")
    for a, k, p in fa["calibration"]:
        print(f"| {a:g} | {a * fa['tests']:.0f} | {k} | {p} |")
    print()
    for shift in (0.25, 0.5):
        d = delays(shift)
        print(f"## Delay after a {shift} sd mean shift (events; 20 seeds; None = not in 20k)\n")
        for name, v in d.items():
            ok = [x for x in v if x is not None]
            med = float(np.median(ok)) if ok else float("nan")
            worst = max(ok) if len(ok) == len(v) else None
            print(f"- {name}: median {med:.0f}, worst {worst}, detected {len(ok)}/{len(v)}")
        print()


if __name__ == "__main__":
    main()
