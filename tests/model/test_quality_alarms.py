"""The accuracy-drop test's operating point, simulated at the detector level (seeded).

Joined events are simulated as correct/incorrect Bernoulli draws, counted in blocks
of ``step`` (exactly what the model stage's ring of block counts holds); the window
is the last ``window // step`` blocks and is judged at every block boundary.
"""

from __future__ import annotations

import numpy as np
import pytest

from detectors.quality_drop import AccuracyDrop

WINDOW, STEP = 5_000, 500
P0 = 0.9


def _drop_test(rng: np.random.Generator) -> AccuracyDrop:
    ref_n = 50_000
    ref_k = int(rng.binomial(ref_n, P0))  # the reference accuracy is itself a sample
    return AccuracyDrop(
        ref_k, ref_n, false_alerts=0.1, per_events=1_000_000, step=STEP, min_drop=0.01
    )


def _first_alarm(test: AccuracyDrop, blocks: np.ndarray) -> int | None:
    """Index (in events) of the first window judged drifting, or None."""
    k = WINDOW // STEP
    sums = np.convolve(blocks, np.ones(k, dtype=np.int64), mode="valid")
    for i, correct in enumerate(sums.tolist()):  # one test per step: 2,000 per 10^6 events
        if test.test(int(correct), WINDOW).drift:
            return (i + k) * STEP
    return None


@pytest.mark.slow
def test_no_false_quality_alert_on_a_stationary_million() -> None:
    for seed in range(3):
        rng = np.random.default_rng(seed)
        test = _drop_test(rng)
        blocks = rng.binomial(STEP, P0, size=1_000_000 // STEP)
        assert _first_alarm(test, blocks) is None, f"false alarm with seed {seed}"


@pytest.mark.slow
def test_a_drop_of_two_and_a_half_points_within_ten_thousand_joined_events() -> None:
    delays = []
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        test = _drop_test(rng)
        before = rng.binomial(STEP, P0, size=100_000 // STEP)
        after = rng.binomial(STEP, P0 - 0.025, size=20_000 // STEP)
        alarm = _first_alarm(test, np.concatenate([before, after]))
        assert alarm is not None and alarm > 100_000, f"seed {seed}: alarm at {alarm}"
        delays.append(alarm - 100_000)
    assert max(delays) <= 10_000, delays
