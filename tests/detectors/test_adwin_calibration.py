"""ADWIN's service defaults, alibi-detect style: silent when stationary, quick on a shift.

Seeded, small-scale versions of ``bench/adwin_calibration.py`` (full figures in
bench/RESULTS.md, "### ADWIN service defaults"). Distributions are standardised to
mean 0 and sd 1, as in the bench: N(0, 1), Gamma(2) (skewed), Student t, 3 df.
"""

from __future__ import annotations

import numpy as np
import pytest

from detectors.adwin import ADWIN
from detectors.adwin_defaults import SERVICE_DEFAULTS

BATCH = 10_000
DISTS = ("normal", "gamma2", "t3")
# bench/adwin_calibration.py, defaults, 0.5 sd shift after 1M values: median
# 2892-3094, max 3775 values after the change (20 runs per distribution); the bound
# leaves ~60% margin over the worst run.
DELAY_BOUND = 6_000


def _draw(rng: np.random.Generator, dist: str, n: int) -> np.ndarray:
    if dist == "normal":
        return rng.standard_normal(n)
    if dist == "gamma2":
        return np.asarray((rng.standard_gamma(2.0, n) - 2.0) / np.sqrt(2.0), dtype=np.float64)
    if dist == "t3":
        return np.asarray(rng.standard_t(3.0, n) / np.sqrt(3.0), dtype=np.float64)
    raise AssertionError(dist)


def _adwin() -> ADWIN:
    return ADWIN(subject="x", **SERVICE_DEFAULTS)  # type: ignore[arg-type]


def test_defaults_are_subwindow_mode_with_small_delta() -> None:
    assert SERVICE_DEFAULTS["mode"] == "subwindow"
    delta = SERVICE_DEFAULTS["delta"]
    assert isinstance(delta, float)
    assert 0.0 < delta <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("dist", DISTS)
def test_no_false_change_on_20m_stationary_values(dist: str) -> None:
    """20M stationary values (two fields' worth of 10M events): no change at all."""
    det = _adwin()
    rng = np.random.default_rng([7, DISTS.index(dist)])
    verdicts = 0
    for _ in range(20):
        x = _draw(rng, dist, 1_000_000)
        for i in range(0, x.size, BATCH):
            verdicts += sum(f.drift for f in det.update(x[i : i + BATCH]))
    assert det.n_detections == 0
    assert verdicts == 0
    assert det.width == 20_000_000  # the window grew over the whole stream, never cut


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("seed", range(4))
def test_half_sd_shift_detected_within_bound(dist: str, seed: int) -> None:
    rng = np.random.default_rng([11, seed, DISTS.index(dist)])
    det = _adwin()
    n_pre = 300_000 + int(rng.integers(0, 1_000))  # the change falls inside a sub-window
    pre = _draw(rng, dist, n_pre)
    for i in range(0, n_pre, BATCH):
        det.update(pre[i : i + BATCH])
    assert det.n_detections == 0
    post = _draw(rng, dist, 50_000) + 0.5
    delay = None
    for i in range(0, post.size, BATCH):
        det.update(post[i : i + BATCH])
        if det.drift_detected:
            delay = i + int(det.last_detections[0]) + 1
            break
    assert delay is not None
    assert delay <= DELAY_BOUND
