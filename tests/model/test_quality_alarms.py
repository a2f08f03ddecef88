"""The accuracy-drop test's operating point, simulated at the detector level (seeded).

Joined events are simulated as correct/incorrect Bernoulli draws, counted in blocks
of ``step`` (exactly what the model stage's ring of block counts holds); the window
is the last ``window // step`` blocks and is judged at every block boundary.
"""

from __future__ import annotations

import numpy as np
import pytest

from detectors.quality_drop import AccuracyDrop, ECERise, F1Drop

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


# -- F1 and ECE: calibrated false alarms, and detection --------------------------------

CELLS = np.array([0.30, 0.06, 0.06, 0.58])  # TP, FP, FN, TN: F1 = 0.833, accuracy 0.88


def _f1_alarms(test: F1Drop, blocks: np.ndarray, window: int = WINDOW) -> list[int]:
    """Events (positions) at which windows of ``window`` events judged every STEP fire."""
    k = window // STEP
    sums = np.stack([np.convolve(blocks[:, c], np.ones(k, np.int64), "valid") for c in range(3)])
    return [
        (i + k) * STEP
        for i in range(sums.shape[1])
        if test.test(int(sums[0, i]), int(sums[1, i]), int(sums[2, i])).drift
    ]


def _f1_reference(rng: np.random.Generator, **budget: float) -> F1Drop:
    tp, fp, fn, _ = rng.multinomial(50_000, CELLS).tolist()
    return F1Drop(tp, fp, fn, step=STEP, min_drop=0.01, **budget)  # type: ignore[arg-type]


@pytest.mark.slow
def test_f1_false_alarm_rate_is_calibrated() -> None:
    """At alpha = 1% on independent windows (window = step), the realised rate of false
    F1 alerts over 20 references x 2,000 windows is within 1% +- 0.35 points (the
    delta-method interval is calibrated, not merely conservative); min_drop 0."""
    fired = total = 0
    for seed in range(20):
        rng = np.random.default_rng(200 + seed)
        tp, fp, fn, _ = rng.multinomial(50_000, CELLS).tolist()
        test = F1Drop(tp, fp, fn, false_alerts=10.0, per_events=1_000_000, step=1000)
        assert test.alpha == pytest.approx(0.01)
        windows = rng.multinomial(1000, CELLS, size=2000)
        fired += sum(test.test(*map(int, w[:3])).drift for w in windows)
        total += len(windows)
    assert 0.0065 < fired / total < 0.0135, fired / total


@pytest.mark.slow
def test_no_false_f1_alert_on_a_stationary_million_and_a_drop_within_ten_thousand() -> None:
    delays = []
    for seed in range(5):
        rng = np.random.default_rng(300 + seed)
        test = _f1_reference(rng, false_alerts=0.1)
        stationary = rng.multinomial(STEP, CELLS, size=1_000_000 // STEP)
        assert not _f1_alarms(test, stationary), f"false F1 alarm with seed {seed}"
        # a model that now misses a fifth of its true positives: F1 0.833 -> 0.77
        worse = np.array([0.24, 0.06, 0.12, 0.58])
        blocks = np.concatenate(
            [stationary[: 100_000 // STEP], rng.multinomial(STEP, worse, size=40)]
        )
        alarms = [a for a in _f1_alarms(test, blocks) if a > 100_000]
        assert alarms and not [a for a in _f1_alarms(test, blocks) if a <= 100_000]
        delays.append(alarms[0] - 100_000)
    assert max(delays) <= 10_000, delays


def _ece_blocks(rng: np.random.Generator, n_blocks: int, shrink: float = 1.0) -> np.ndarray:
    """Calibration sums (3 x 10 bins) of blocks of STEP events; labels ~ Bernoulli
    (score * shrink): 1 is calibrated, below 1 over-confident."""
    q = rng.beta(2, 3, n_blocks * STEP)
    y = rng.uniform(0, 1, q.size) < q * shrink
    bins = np.searchsorted(np.linspace(0, 1, 11)[1:-1], q)
    at = np.repeat(np.arange(n_blocks), STEP) * 10 + bins
    size = n_blocks * 10
    return np.stack(
        [
            np.bincount(at, minlength=size).astype(np.float64),
            np.bincount(at, weights=y.astype(np.float64), minlength=size),
            np.bincount(at, weights=q, minlength=size),
        ]
    ).reshape(3, n_blocks, 10)


def _ece_alarms(test: ECERise, blocks: np.ndarray, window: int = WINDOW) -> list[int]:
    k = window // STEP
    csum = np.concatenate([np.zeros((3, 1, 10)), np.cumsum(blocks, axis=1)], axis=1)
    out = []
    for i in range(k, blocks.shape[1] + 1):
        if test.test_sums(csum[:, i] - csum[:, i - k]).drift:
            out.append(i * STEP)
    return out


@pytest.mark.slow
def test_ece_false_alarms_stay_below_alpha_and_none_on_a_stationary_million() -> None:
    """The ECE test is a little conservative: at alpha = 5% and 1% on 4,000 independent
    windows of 5,000 events its realised rate is below alpha but of its order (about 2%
    and 0.3%); with the default budget no false alarm in 10^6 events (3 seeds); and an
    over-confident model (true rate 0.8 x score) fires within 10,000 events."""
    rng = np.random.default_rng(400)
    ref = _ece_blocks(rng, 100).sum(axis=1)
    windows = _ece_blocks(rng, 4000 * WINDOW // STEP).reshape(3, 4000, WINDOW // STEP, 10)
    for alpha, low in ((0.05, 0.01), (0.01, 0.001)):
        loose = ECERise(ref, false_alerts=alpha * 200, per_events=1_000_000, step=WINDOW)
        assert loose.alpha == pytest.approx(alpha)
        fired = sum(loose.test_sums(windows[:, i].sum(axis=1)).drift for i in range(4000))
        assert low < fired / 4000 < alpha, (alpha, fired)
    for seed in range(3):
        rng = np.random.default_rng(410 + seed)
        test = ECERise(_ece_blocks(rng, 100).sum(axis=1), false_alerts=0.1, step=STEP,
                       min_drop=0.01)  # fmt: skip
        stationary = _ece_blocks(rng, 1_000_000 // STEP)
        assert not _ece_alarms(test, stationary), f"false ECE alarm with seed {seed}"
        blocks = np.concatenate([stationary[:, :200], _ece_blocks(rng, 40, shrink=0.8)], axis=1)
        alarms = _ece_alarms(test, blocks)
        assert alarms and alarms[0] > 100_000 and alarms[0] - 100_000 <= 10_000, alarms[:3]
