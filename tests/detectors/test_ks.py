"""KS against scipy.stats.ks_2samp, with the binning error bound."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy import special, stats

from detectors.baseline import build_numeric
from detectors.ks import KS, ks_exact, ks_from_counts, ks_resolution

Gen = Callable[[np.random.Generator, int, float], np.ndarray]
DISTRIBUTIONS: dict[str, Gen] = {
    "normal": lambda r, n, s: r.normal(s, 1.0, n),
    "lognormal": lambda r, n, s: r.lognormal(s, 1.0, n),
    "student_t2": lambda r, n, s: r.standard_t(2, n) + s,
    "poisson": lambda r, n, s: r.poisson(3.0 + 4 * s, n).astype(np.float64),
}


@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("shift", [0.0, 0.1])
def test_binned_d_matches_ks_2samp_within_resolution(dist: str, shift: float) -> None:
    rng = np.random.default_rng(11)
    gen = DISTRIBUTIONS[dist]
    base = gen(rng, 100_000, 0.0)
    b = build_numeric(base, bins=1000)
    cdf = np.cumsum(b.counts[:-1]) / b.n
    for _ in range(3):
        win = gen(rng, 10_000, shift)
        counts = np.bincount(b.bin_index(win), minlength=b.bins)
        exact = stats.ks_2samp(base, win, method="asymp").statistic
        binned = float(ks_from_counts(cdf, counts))
        bound = float(ks_resolution(b.counts, counts))
        assert binned <= exact + 1e-12
        assert exact - binned <= bound + 1e-12
        if dist == "poisson":  # atoms are edges: binned D is exact (the bound is loose)
            assert binned == pytest.approx(exact, abs=1e-12)
        else:
            assert bound < 0.003  # 1000 bins, 10k-event window


def test_exact_mode_equals_ks_2samp_and_p_value_is_asymptotic() -> None:
    rng = np.random.default_rng(5)
    base = rng.lognormal(0, 1, 20_000)
    b = build_numeric(base, bins=200, keep_sample=20_000)
    assert b.full_sample
    ks = KS(b, subject="x", window_events=2_000, step_events=500)
    win = rng.lognormal(0.05, 1, 2_000)
    (f,) = ks.update(win)
    ref = stats.ks_2samp(base, win, method="asymp")
    assert dict(f.details)["exact"] == 1.0
    assert f.statistic == pytest.approx(ref.statistic, abs=1e-15)
    assert ks_exact(b.sample, win) == pytest.approx(ref.statistic, abs=1e-15)  # type: ignore[arg-type]
    n_eff = 20_000 * 2_000 / 22_000
    assert f.p_value == pytest.approx(special.kolmogorov(np.sqrt(n_eff) * f.statistic))
    assert f.p_value == pytest.approx(stats.kstwobign.sf(np.sqrt(n_eff) * f.statistic))


def test_threshold_is_effect_and_significance() -> None:
    rng = np.random.default_rng(2)
    b = build_numeric(rng.normal(size=50_000))
    ks = KS(b, d_min=0.05, ert=1e6)
    m = 10_000
    assert ks.alpha == pytest.approx(1_000 / 1e6)
    crit = special.kolmogi(ks.alpha) / np.sqrt(50_000 * m / 60_000)
    assert ks.critical_d(m) == pytest.approx(crit)
    (f,) = ks.update(rng.normal(size=m))
    assert f.threshold == pytest.approx(max(0.05, crit))
    assert f.drift == (f.statistic >= f.threshold)


def test_exact_mode_state_round_trip_and_merge() -> None:
    rng = np.random.default_rng(9)
    b = build_numeric(rng.normal(size=5_000), bins=100, keep_sample=5_000)
    batches = [rng.normal(0.3 * (i > 4), 1, 450) for i in range(10)]
    a = KS(b, window_events=1_000, step_events=250)
    want = [a.update(x) for x in batches]
    first = KS(b, window_events=1_000, step_events=250)
    for x in batches[:4]:
        first.update(x)
    second = KS(b, window_events=1_000, step_events=250)
    second.restore(first.state())
    assert [second.update(x) for x in batches[4:]] == want[4:]
    other = KS(b, window_events=1_000, step_events=250)
    other.update(batches[0][:300])
    other.update(batches[1])
    second.merge(other)
    f = second.evaluate()
    assert f is not None
    assert f.statistic == pytest.approx(
        stats.ks_2samp(b.sample, second._window.values()).statistic, abs=1e-15
    )
