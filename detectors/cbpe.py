"""Confidence-based performance estimation (CBPE) for a classifier, before labels.

If the positive-class probability ``q`` of each prediction were calibrated, the
expected confusion matrix of a window would be known without labels: a positive
prediction is a true positive with probability ``q``, a negative one a false
negative with probability ``q``. CBPE sums these expectations over the window:

    E[TP] = sum(q * said),   E[FP] = sum((1 - q) * said),
    E[FN] = sum(q * ~said),  E[TN] = sum((1 - q) * ~said),

and reads accuracy, precision, recall and F1 off them. The model's raw scores are
first calibrated on the reference (scores and labels): isotonic regression (pool
adjacent violators, equal to ``sklearn.isotonic.IsotonicRegression`` with
``out_of_bounds="clip"``) or histogram binning (equal-frequency bins, the positive
rate of each bin).

The sufficient statistics are additive (``window_sums``), so windows are rings of
block sums and partitions merge by addition. The estimate's standard error for
accuracy is ``sqrt(sum c (1 - c)) / n`` with ``c`` the probability that a
prediction is correct (a sum of independent Bernoulli variables).

A multiclass classifier is estimated top-label: its confidence (the top class
probability) is calibrated on whether the prediction was right in the reference, and
every prediction is passed as "positive" (``said_positive`` all true), so
``E[TP] = sum q`` and the estimated accuracy is the mean calibrated confidence
(precision, recall and F1 of that estimate mean nothing and are not used). Its
assumption is that P(right | confidence) holds.

Assumption (stated wherever the estimate is shown): the calibration learned on the
reference still holds, i.e. the drift is covariate shift (P(y | x) unchanged). A
concept shift is invisible to CBPE; realized quality catches it once labels come.

>>> rng = np.random.default_rng(7)
>>> ref_q = rng.uniform(0, 1, 20_000)
>>> ref_y = rng.uniform(0, 1, 20_000) < ref_q
>>> cbpe = CBPE(ref_q, ref_y, threshold=0.5)
>>> q = rng.beta(2, 2, 5_000)
>>> est = cbpe.estimate(q, q >= 0.5)
>>> y = rng.uniform(0, 1, 5_000) < q
>>> realized = float(np.mean((q >= 0.5) == y))
>>> abs(est.accuracy - realized) < 3 * est.accuracy_se + 0.01
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from numba import njit

__all__ = ["CBPE", "N_SUMS", "CBPEEstimate", "isotonic_fit"]

# window_sums layout: n, E[TP], E[FP], E[FN], E[TN], sum c(1 - c)
N_SUMS = 6


@njit(cache=True)
def _pav(y: npt.NDArray[np.float64], w: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Pool adjacent violators: the non-decreasing fit of ``y`` with weights ``w``."""
    n = y.size
    value = np.empty(n)
    weight = np.empty(n)
    start = np.empty(n, np.int64)
    k = 0
    for i in range(n):
        value[k] = y[i]
        weight[k] = w[i]
        start[k] = i
        while k > 0 and value[k - 1] >= value[k]:
            total = weight[k - 1] + weight[k]
            value[k - 1] = (value[k - 1] * weight[k - 1] + value[k] * weight[k]) / total
            weight[k - 1] = total
            k -= 1
        k += 1
    out = np.empty(n)
    for b in range(k):
        end = start[b + 1] if b + 1 < k else n
        for i in range(start[b], end):
            out[i] = value[b]
    return out


def isotonic_fit(
    score: npt.NDArray[np.float64], positive: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Knots ``(x, y)`` of the isotonic fit of ``positive`` on ``score`` (ties averaged).

    >>> x, y = isotonic_fit(np.array([0.1, 0.2, 0.3, 0.4]), np.array([False, True, False, True]))
    >>> x.tolist(), y.tolist()
    ([0.1, 0.2, 0.3, 0.4], [0.0, 0.5, 0.5, 1.0])
    """
    x, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=positive.astype(np.float64), minlength=x.size)
    weights = counts.astype(np.float64)
    fitted: npt.NDArray[np.float64] = _pav(sums / weights, weights)
    return x, fitted


@dataclass(frozen=True, slots=True)
class CBPEEstimate:
    """Estimated quality of ``n`` predictions (no labels used); ``nan`` where undefined."""

    n: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    accuracy_se: float

    def get(self, metric: str) -> float:
        value: float = getattr(self, metric)
        return value


class CBPE:
    """Calibrate on the reference, then estimate quality of unlabelled windows.

    ``reference_score``: positive-class scores of the reference predictions;
    ``reference_positive``: whether each reference label is the positive class;
    ``threshold``: a score at or above it is a positive prediction (used when the
    prediction's class is not given); ``method``: ``"isotonic"`` or ``"histogram"``.
    """

    ESTIMATED_METRICS = ("accuracy", "precision", "recall", "f1")

    def __init__(
        self,
        reference_score: npt.NDArray[np.float64],
        reference_positive: npt.NDArray[np.bool_],
        threshold: float = 0.5,
        method: Literal["isotonic", "histogram"] = "isotonic",
        n_bins: int = 20,
    ) -> None:
        self.threshold = threshold
        self.method = method
        self.n_bins = n_bins
        if reference_score.size < 2 or reference_score.size != reference_positive.size:
            raise ValueError("CBPE needs at least 2 reference scores, each with a label")
        if method == "isotonic":
            x, y = isotonic_fit(reference_score, reference_positive)
            # only the ends of each constant run matter to np.interp: fewer knots, the
            # same values, a cheaper calibration per window
            ends = np.ones(y.size, np.bool_)
            ends[1:-1] = (y[1:-1] != y[:-2]) | (y[1:-1] != y[2:])
            self._x, self._y = x[ends], y[ends]
        elif method == "histogram":
            edges = np.unique(np.quantile(reference_score, np.linspace(0, 1, n_bins + 1)))
            self._edges = edges[1:-1]
            bins = np.searchsorted(self._edges, reference_score, side="right")
            k = self._edges.size + 1
            count = np.bincount(bins, minlength=k).astype(np.float64)
            hits = np.bincount(bins, weights=reference_positive.astype(np.float64), minlength=k)
            overall = float(np.mean(reference_positive))
            self._rate = np.where(count > 0, hits / np.maximum(count, 1.0), overall)
        else:
            raise ValueError(f"method must be 'isotonic' or 'histogram', got {method!r}")

    def calibrate(self, score: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Calibrated positive-class probabilities of raw ``score``."""
        if self.method == "isotonic":
            out: npt.NDArray[np.float64] = np.interp(score, self._x, self._y)
            return out
        rate: npt.NDArray[np.float64] = self._rate[
            np.searchsorted(self._edges, score, side="right")
        ]
        return rate

    def window_sums(
        self, score: npt.NDArray[np.float64], said_positive: npt.NDArray[np.bool_] | None = None
    ) -> npt.NDArray[np.float64]:
        """The additive sufficient statistics (length ``N_SUMS``) of these predictions."""
        q = self.calibrate(score)
        said = score >= self.threshold if said_positive is None else said_positive
        correct = np.where(said, q, 1.0 - q)
        return np.array(
            [
                float(score.size),
                float(q[said].sum()),
                float((1.0 - q[said]).sum()),
                float(q[~said].sum()),
                float((1.0 - q[~said]).sum()),
                float((correct * (1.0 - correct)).sum()),
            ]
        )

    @staticmethod
    def from_sums(sums: npt.NDArray[np.float64]) -> CBPEEstimate:
        """The estimate read off summed ``window_sums``."""
        n, tp, fp, fn, tn, var = (float(v) for v in sums)
        if n <= 0:
            nan = math.nan
            return CBPEEstimate(0, nan, nan, nan, nan, nan)

        def ratio(a: float, b: float) -> float:
            return a / b if b > 0 else math.nan

        return CBPEEstimate(
            n=int(n),
            accuracy=(tp + tn) / n,
            precision=ratio(tp, tp + fp),
            recall=ratio(tp, tp + fn),
            f1=ratio(2 * tp, 2 * tp + fp + fn),
            accuracy_se=math.sqrt(var) / n,
        )

    def estimate(
        self, score: npt.NDArray[np.float64], said_positive: npt.NDArray[np.bool_] | None = None
    ) -> CBPEEstimate:
        """Estimated quality of one window of predictions."""
        return self.from_sums(self.window_sums(score, said_positive))
