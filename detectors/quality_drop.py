"""Is a window's model quality worse than the reference's? Tests with a false-alarm budget.

A quality window is judged every ``step`` joined events. The budget is stated the
way an operator thinks of it: ``false_alerts`` expected false alerts per
``per_events`` joined events of a stationary stream. That is ``per_events / step``
tests, so each test runs at ``alpha = false_alerts * step / per_events``
(Bonferroni over the tests; overlapping windows are positively correlated, so the
realised false-alert rate is below the budget).

* :class:`AccuracyDrop`: a one-sided test of the window's accuracy (``k`` correct
  of ``n``) against the reference's (``k0`` of ``n0``): the two-proportion z-test
  with unpooled variance when the reference is a sample, the exact binomial test
  (``scipy.stats.binomtest(k, n, p0, alternative="less")``) when the reference
  accuracy is taken as exact (``n0=None``). A drop also needs to reach
  ``min_drop`` (effect size), so a huge window does not page on 0.1 points.
* :class:`MeanShift`: a z-test (Welch, both variances) of a per-event loss mean
  (absolute error for MAE, squared error for RMSE, log loss, signed error for
  bias) against the reference mean: one-sided "increase" or two-sided.
* :class:`AUCDrop`: DeLong's variance of the window's ROC AUC (DeLong, DeLong and
  Clarke-Pearson 1988, via midranks, O(n log n)) plus the reference's, and a
  one-sided z-test of the difference.
* :class:`F1Drop`: the delta-method variance of F1 = 2TP / (2TP + FP + FN) under
  multinomial sampling of the window's events, ``4 TP (FP + FN)(TP + FP + FN) /
  (2TP + FP + FN)^4`` (``f1_variance``; TN does not enter), plus the reference's,
  and a one-sided z-test of the drop.
* :class:`ECERise`: has the expected calibration error grown beyond what the
  reference's calibration explains? Under the null the window's positives in each
  score bin ``b`` are binomial with the reference's positive rate ``r_b`` of that
  bin, so ``X_b = hits_b - mass_b`` is about normal with mean
  ``mu_b = count_b r_b - mass_b`` and variance ``s_b^2 = count_b r_b (1 - r_b)``
  (plus the reference rate's own, ``count_b^2 r_b (1 - r_b) / n0_b``), and
  ``n ECE = sum |X_b|`` is a sum of independent folded normals, whose mean and
  variance are exact (``E|X| = s sqrt(2/pi) exp(-mu^2 / 2 s^2) + mu (1 - 2 Phi(-mu/s))``,
  ``E X^2 = mu^2 + s^2``). The test fires above the ``1 - alpha`` quantile of the
  gamma distribution with that mean and variance (a right-skewed sum; a moment
  approximation, not a bound: measured conservative, about 2% false alarms at
  alpha 5% and 0.3% at 1%, ``tests/model/test_quality_alarms.py``). It conditions on the
  window's scores, so a covariate shift alone does not fire it (the reference's
  calibration still holds); the rise over the reference's own ECE must also reach
  ``min_drop``.

>>> drop = AccuracyDrop(reference_correct=9000, reference_n=10000,
...                     false_alerts=1.0, per_events=1_000_000, step=500)
>>> drop.alpha
0.0005
>>> drop.test(correct=4400, n=5000).drift, drop.test(correct=4520, n=5000).drift
(True, False)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.stats import binomtest, gamma, norm, rankdata

__all__ = [
    "AUCDrop",
    "AccuracyDrop",
    "DropTest",
    "ECERise",
    "F1Drop",
    "MeanShift",
    "calibration_sums",
    "delong_auc_variance",
    "f1_variance",
]


@dataclass(frozen=True, slots=True)
class DropTest:
    """One test's outcome: the window's value, the reference's, z and p (one-sided)."""

    value: float
    reference: float
    statistic: float  # reference - value (the drop)
    threshold: float  # the drop at and above which the test fires (at this n)
    p_value: float
    drift: bool


def _alpha(false_alerts: float, per_events: int, step: int) -> float:
    if false_alerts <= 0:
        raise ValueError(f"false_alerts must be > 0, got {false_alerts}")
    if per_events < step or step <= 0:
        raise ValueError(f"need 0 < step <= per_events, got step={step} per={per_events}")
    return min(0.5, false_alerts * step / per_events)


class AccuracyDrop:
    """One-sided accuracy-drop test against the reference (see the module docstring).

    ``reference_n=None`` takes ``reference_correct`` as the exact accuracy (a
    probability) and runs the binomial test.
    """

    def __init__(
        self,
        reference_correct: float,
        reference_n: int | None,
        false_alerts: float = 1.0,
        per_events: int = 1_000_000,
        step: int = 500,
        min_drop: float = 0.0,
    ) -> None:
        self.reference_correct = reference_correct
        self.reference_n = reference_n
        self.false_alerts = false_alerts
        self.per_events = per_events
        self.step = step
        self.min_drop = min_drop
        if reference_n is None:
            if not 0.0 < reference_correct < 1.0:
                raise ValueError(
                    f"an exact reference accuracy must be in (0, 1), got {reference_correct}"
                )
            self.p0 = float(reference_correct)
        else:
            if reference_n <= 0 or not 0 <= reference_correct <= reference_n:
                raise ValueError("need reference_n > 0 and 0 <= reference_correct <= reference_n")
            self.p0 = float(reference_correct) / reference_n
        self.alpha = _alpha(false_alerts, per_events, step)
        self._z = float(norm.isf(self.alpha))

    def test(self, correct: int, n: int) -> DropTest:
        """Is ``correct`` of ``n`` significantly below the reference accuracy?"""
        if n <= 0:
            return DropTest(math.nan, self.p0, math.nan, math.nan, 1.0, False)
        p = correct / n
        drop = self.p0 - p
        if self.reference_n is None:
            p_value = float(binomtest(int(correct), int(n), self.p0, alternative="less").pvalue)
            se = math.sqrt(self.p0 * (1 - self.p0) / n)
        else:
            se = math.sqrt(p * (1 - p) / n + self.p0 * (1 - self.p0) / self.reference_n)
            p_value = float(norm.sf(drop / se)) if se > 0 else (0.0 if drop > 0 else 1.0)
        threshold = max(self.min_drop, self._z * se)
        drift = p_value < self.alpha and drop >= self.min_drop
        return DropTest(p, self.p0, drop, threshold, p_value, drift)


def delong_auc_variance(
    positive: npt.NDArray[np.bool_], score: npt.NDArray[np.float64]
) -> tuple[float, float]:
    """ROC AUC and its DeLong variance (structural components from midranks).

    >>> auc, var = delong_auc_variance(np.array([True, True, False, False, True]),
    ...                                np.array([0.9, 0.6, 0.3, 0.7, 0.8]))
    >>> round(auc, 4), round(var, 5)
    (0.8333, 0.05556)
    """
    x = score[positive]
    y = score[~positive]
    m, n = x.size, y.size
    if m < 2 or n < 2:
        return math.nan, math.nan
    tz = rankdata(np.concatenate([x, y]))
    tx = rankdata(x)
    ty = rankdata(y)
    auc = (tz[:m].sum() - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:m] - tx) / n  # per positive: share of negatives it beats
    v01 = 1.0 - (tz[m:] - ty) / m  # per negative: share of positives above it
    var = float(np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n)
    return float(auc), var


class AUCDrop:
    """One-sided test of a window's ROC AUC against the reference AUC.

    ``reference_variance`` is the reference AUC's DeLong variance (0 for an exact
    reference). The false-alarm budget is as for :class:`AccuracyDrop`.
    """

    def __init__(
        self,
        reference_auc: float,
        reference_variance: float = 0.0,
        false_alerts: float = 1.0,
        per_events: int = 1_000_000,
        step: int = 500,
        min_drop: float = 0.0,
    ) -> None:
        self.reference_auc = reference_auc
        self.reference_variance = reference_variance
        self.false_alerts = false_alerts
        self.per_events = per_events
        self.step = step
        self.min_drop = min_drop
        self.alpha = _alpha(false_alerts, per_events, step)
        self._z = float(norm.isf(self.alpha))

    def test(self, positive: npt.NDArray[np.bool_], score: npt.NDArray[np.float64]) -> DropTest:
        """Is the AUC of ``score`` on this window significantly below the reference?"""
        return self.test_auc(*delong_auc_variance(positive, score))

    def test_auc(self, auc: float, var: float) -> DropTest:
        """Judge a window's AUC and its DeLong variance (``delong_auc_variance``)."""
        if not math.isfinite(var):
            return DropTest(auc, self.reference_auc, math.nan, math.nan, 1.0, False)
        se = math.sqrt(var + self.reference_variance)
        drop = self.reference_auc - auc
        p_value = float(norm.sf(drop / se)) if se > 0 else (0.0 if drop > 0 else 1.0)
        threshold = max(self.min_drop, self._z * se)
        return DropTest(
            auc,
            self.reference_auc,
            drop,
            threshold,
            p_value,
            p_value < self.alpha and drop >= self.min_drop,
        )


class MeanShift:
    """Has the mean of a per-event loss grown (or, two-sided, moved) from the reference?

    ``reference_mean``/``reference_var``/``reference_n`` describe the reference's
    per-event values; a window is judged from its ``mean``, ``var`` and ``n``.
    ``statistic`` is the signed change (window - reference; its absolute value
    when two-sided).

    >>> t = MeanShift(1.0, 0.25, 50_000, step=500)
    >>> t.test(1.1, 0.25, 5000).drift, t.test(1.01, 0.25, 5000).drift
    (True, False)
    """

    def __init__(
        self,
        reference_mean: float,
        reference_var: float,
        reference_n: int,
        two_sided: bool = False,
        false_alerts: float = 1.0,
        per_events: int = 1_000_000,
        step: int = 500,
        min_change: float = 0.0,
    ) -> None:
        self.reference_mean = reference_mean
        self.reference_var = reference_var
        self.reference_n = reference_n
        self.two_sided = two_sided
        self.false_alerts = false_alerts
        self.per_events = per_events
        self.step = step
        self.min_change = min_change
        self.alpha = _alpha(false_alerts, per_events, step)
        self._z = float(norm.isf(self.alpha / 2 if two_sided else self.alpha))

    def test(self, mean: float, var: float, n: int) -> DropTest:
        """Judge a window whose per-event values have this ``mean``, ``var``, ``n``."""
        if n < 2 or not math.isfinite(mean):
            return DropTest(mean, self.reference_mean, math.nan, math.nan, 1.0, False)
        change = mean - self.reference_mean
        se = math.sqrt(var / n + self.reference_var / max(self.reference_n, 1))
        stat = abs(change) if self.two_sided else change
        if se > 0:
            p_value = float(norm.sf(stat / se)) * (2 if self.two_sided else 1)
        else:
            p_value = 0.0 if stat > 0 else 1.0
        threshold = max(self.min_change, self._z * se)
        drift = p_value < self.alpha and stat >= self.min_change
        return DropTest(mean, self.reference_mean, stat, threshold, min(p_value, 1.0), drift)


def f1_variance(tp: float, fp: float, fn: float) -> tuple[float, float]:
    """F1 of these counts and its delta-method variance (``nan`` without any of them).

    >>> f1, var = f1_variance(80, 20, 20)
    >>> f1, round(var, 8)
    (0.8, 0.00096)
    """
    den = 2 * tp + fp + fn
    if den <= 0:
        return math.nan, math.nan
    return 2 * tp / den, 4 * tp * (fp + fn) * (tp + fp + fn) / den**4


class F1Drop:
    """One-sided test of a window's F1 against the reference's (see the module docstring).

    >>> t = F1Drop(8000, 2000, 2000, step=500)
    >>> t.test(720, 280, 280).drift, t.test(790, 210, 210).drift
    (True, False)
    """

    def __init__(
        self,
        reference_tp: int,
        reference_fp: int,
        reference_fn: int,
        false_alerts: float = 1.0,
        per_events: int = 1_000_000,
        step: int = 500,
        min_drop: float = 0.0,
    ) -> None:
        f1, var = f1_variance(reference_tp, reference_fp, reference_fn)
        if not math.isfinite(f1):
            raise ValueError("the reference has no positive label or prediction: no F1")
        self.reference_f1 = f1
        self.reference_variance = var
        self.false_alerts = false_alerts
        self.per_events = per_events
        self.step = step
        self.min_drop = min_drop
        self.alpha = _alpha(false_alerts, per_events, step)
        self._z = float(norm.isf(self.alpha))

    def test(self, tp: int, fp: int, fn: int) -> DropTest:
        """Is the F1 of these window counts significantly below the reference's?"""
        f1, var = f1_variance(tp, fp, fn)
        if not math.isfinite(f1):
            return DropTest(f1, self.reference_f1, math.nan, math.nan, 1.0, False)
        se = math.sqrt(var + self.reference_variance)
        drop = self.reference_f1 - f1
        p_value = float(norm.sf(drop / se)) if se > 0 else (0.0 if drop > 0 else 1.0)
        threshold = max(self.min_drop, self._z * se)
        drift = p_value < self.alpha and drop >= self.min_drop
        return DropTest(f1, self.reference_f1, drop, threshold, p_value, drift)


def calibration_sums(
    positive: npt.NDArray[np.bool_], score: npt.NDArray[np.float64], n_bins: int = 10
) -> npt.NDArray[np.float64]:
    """Per equal-width score bin: events, positives and summed scores (rows of a
    ``(3, n_bins)`` array; the bins of ``detectors.quality.expected_calibration_error``).

    >>> calibration_sums(np.array([True, False]), np.array([0.95, 0.05]), 2).tolist()
    [[1.0, 1.0], [0.0, 1.0], [0.05, 0.95]]
    """
    bins = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], score)
    return np.stack(
        [
            np.bincount(bins, minlength=n_bins).astype(np.float64),
            np.bincount(bins, weights=positive.astype(np.float64), minlength=n_bins),
            np.bincount(bins, weights=score, minlength=n_bins),
        ]
    )


class ECERise:
    """Has a window's expected calibration error grown beyond the reference's
    calibration (see the module docstring)? ``reference_sums`` are the reference's
    ``calibration_sums``.

    >>> rng = np.random.default_rng(1)
    >>> q = rng.uniform(0, 1, 50_000)
    >>> t = ECERise(calibration_sums(rng.uniform(0, 1, q.size) < q, q), step=500)
    >>> w = rng.uniform(0, 1, 5_000)
    >>> t.test(rng.uniform(0, 1, w.size) < w, w).drift  # calibrated as the reference
    False
    >>> t.test(rng.uniform(0, 1, w.size) < w * 0.7, w).drift  # over-confident now
    True
    """

    def __init__(
        self,
        reference_sums: npt.NDArray[np.float64],
        false_alerts: float = 1.0,
        per_events: int = 1_000_000,
        step: int = 500,
        min_drop: float = 0.0,
    ) -> None:
        count, hits, mass = (np.asarray(r, np.float64) for r in reference_sums)
        if count.sum() <= 0:
            raise ValueError("the reference has no scored events: no ECE")
        self.n_bins = int(count.size)
        self.reference_ece = float(np.abs(hits - mass).sum() / count.sum())
        # the reference's positive rate per bin (a half event added each way keeps
        # empty and pure bins away from 0 and 1); its count for the rate's variance
        self._rate = (hits + 0.5) / (count + 1.0)
        self._ref_count = count + 1.0
        self.false_alerts = false_alerts
        self.per_events = per_events
        self.step = step
        self.min_drop = min_drop
        self.alpha = _alpha(false_alerts, per_events, step)

    def test(self, positive: npt.NDArray[np.bool_], score: npt.NDArray[np.float64]) -> DropTest:
        """Judge a window of labels (``positive``) and positive-class scores."""
        ok = np.isfinite(score)
        return self.test_sums(calibration_sums(positive[ok], score[ok], self.n_bins))

    def test_sums(self, sums: npt.NDArray[np.float64]) -> DropTest:
        """Judge a window from its ``calibration_sums``."""
        count, hits, mass = (np.asarray(r, np.float64) for r in sums)
        n = float(count.sum())
        if n <= 0:
            return DropTest(math.nan, self.reference_ece, math.nan, math.nan, 1.0, False)
        ece = float(np.abs(hits - mass).sum() / n)
        used = count > 0
        r, c = self._rate[used], count[used]
        var = c * r * (1 - r) + c**2 * r * (1 - r) / self._ref_count[used]
        sd = np.sqrt(var)
        mu = c * r - mass[used]
        folded = sd * math.sqrt(2 / math.pi) * np.exp(-(mu**2) / (2 * var)) + mu * (
            1 - 2 * norm.cdf(-mu / sd)
        )
        mean = float(folded.sum())
        spread = float((mu**2 + var - folded**2).sum())
        shape, scale = mean * mean / spread, spread / mean
        bound = float(gamma.isf(self.alpha, shape, scale=scale)) / n
        p_value = float(gamma.sf(ece * n, shape, scale=scale))
        rise = ece - self.reference_ece
        threshold = max(self.min_drop, bound - self.reference_ece)
        drift = p_value < self.alpha and rise >= self.min_drop
        return DropTest(ece, self.reference_ece, rise, threshold, p_value, drift)
