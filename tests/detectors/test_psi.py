"""PSI against a direct numpy computation; ChiSquare against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from detectors.baseline import build_categorical, build_numeric
from detectors.categorical import ChiSquare
from detectors.psi import PSI


def _direct_psi(base: np.ndarray, win: np.ndarray, edges: np.ndarray, s: float) -> float:
    a = np.histogram(base, edges)[0].astype(float)
    c = np.histogram(win, edges)[0].astype(float)
    k = a.size
    p = (a + s) / (a.sum() + s * k)
    q = (c + s) / (c.sum() + s * k)
    return float(np.sum((q - p) * np.log(q / p)))


@pytest.mark.parametrize("bins", [10, 20])
def test_numeric_psi_equals_direct_computation(bins: int) -> None:
    rng = np.random.default_rng(4)
    base = rng.lognormal(0, 1, 50_000)
    b = build_numeric(base, bins=1000)
    det = PSI(b, subject="x", bins=bins, window_events=5_000, step_events=5_000, psi_min=0.0)
    win = rng.lognormal(0.1, 1, 5_000)
    (f,) = det.update(win)
    # Coarse edges: the fine edges where the coarse groups start (np.histogram bins
    # are [lo, hi) like ours except the last; the outer edges are infinite).
    coarse = np.concatenate([b.edges[det._starts], [np.inf]])
    assert det._starts.size == bins
    want = _direct_psi(base, win, coarse, 0.5)
    assert f.statistic == pytest.approx(want, abs=1e-9)
    # Equal-mass coarse bins: each holds about 1/bins of the baseline.
    assert np.allclose(det.baseline_coarse_counts / b.n, 1 / bins, atol=0.002)
    n_eff = 50_000 * 5_000 / 55_000
    assert f.p_value == pytest.approx(stats.chi2.sf(n_eff * f.statistic, bins - 1))


def test_categorical_psi_counts_unseen_codes_in_their_own_bin() -> None:
    base = build_categorical({"a": 500, "b": 300, "c": 200}, categories=["a", "b", "c"])
    det = PSI(base, window_events=100, step_events=100, psi_min=0.0)
    codes = np.array([0] * 40 + [1] * 30 + [2] * 20 + [3] * 6 + [7] * 4)
    (f,) = det.update(codes)
    a = np.array([500, 300, 200, 0.0])
    c = np.array([40, 30, 20, 10.0])
    p = (a + 0.5) / (a.sum() + 2.0)
    q = (c + 0.5) / (c.sum() + 2.0)
    assert f.statistic == pytest.approx(float(np.sum((q - p) * np.log(q / p))), abs=1e-12)


@pytest.mark.parametrize(("test", "lam"), [("pearson", "pearson"), ("g", "log-likelihood")])
def test_chi2_matches_scipy(test: str, lam: str) -> None:
    rng = np.random.default_rng(8)
    counts = {"ok": 7000, "warn": 2000, "fail": 900, "gone": 0, "odd": 100}
    base = build_categorical(counts, categories=list(counts))
    det = ChiSquare(base, test=test, window_events=2_000, step_events=1_000, w_min=0.0)
    codes = rng.choice(6, 2_000, p=[0.66, 0.22, 0.09, 0.005, 0.01, 0.015])
    (f,) = det.update(codes)
    tested = np.array([0, 1, 2, 4])  # "gone" has no baseline mass: counted as unseen
    obs = np.bincount(codes, minlength=6)[tested]
    q = np.array([7000, 2000, 900, 100.0])
    ref = stats.power_divergence(obs, obs.sum() * q / q.sum(), lambda_=lam)
    if test == "pearson":
        assert ref.statistic == pytest.approx(stats.chisquare(obs, obs.sum() * q / q.sum())[0])
    assert f.statistic == pytest.approx(ref.statistic, rel=1e-12)
    d = dict(f.details)
    unseen = int(np.sum(codes == 3) + np.sum(codes == 5))
    assert d["unseen_rate"] == pytest.approx(unseen / 2_000)
    assert d["unseen_drift"] == 1.0
    assert f.drift
    # With a huge baseline the p-value tends to scipy's (the baseline is then exact).
    big = build_categorical({k: v * 10_000 for k, v in counts.items()}, categories=list(counts))
    det2 = ChiSquare(big, test=test, window_events=2_000, step_events=1_000)
    (g,) = det2.update(codes)
    assert g.p_value == pytest.approx(ref.pvalue, rel=1e-3)


def test_unseen_rate_threshold_alone() -> None:
    base = build_categorical({"a": 50, "b": 50}, categories=["a", "b"])
    det = ChiSquare(base, window_events=100, step_events=100, max_unseen_rate=0.05)
    (f,) = det.update(np.array([0, 1] * 48 + [2] * 4))
    assert not f.drift
    (g,) = det.update(np.array([0, 1] * 47 + [5] * 6))
    assert g.drift
    assert dict(g.details)["unseen_drift"] == 1.0
