"""Model quality over a window of joined events: classification and regression metrics.

Pure functions of whole arrays (one call per window, never per event). They equal
scikit-learn's metrics on the same data (``tests/detectors/test_quality.py``):

* classification (binary, or one class against the rest): ``accuracy`` (all
  classes), ``precision``, ``recall``, ``f1`` for the positive class, ``roc_auc``
  (Mann-Whitney with tied scores counted half, as ``roc_auc_score``), ``log_loss``
  (probabilities clipped to ``[eps, 1 - eps]`` with float64 ``eps``, as
  ``log_loss``) and ``ece``, the expected calibration error over ``n_bins``
  equal-width bins of the positive-class score (the bins of
  ``sklearn.calibration.calibration_curve(strategy="uniform")``);
* regression: ``mae``, ``rmse`` and ``bias`` (mean of prediction minus truth).

A metric that is undefined on the window (precision without positive predictions,
AUC with one class only, anything on an empty window) is ``nan``, not 0: an empty
denominator is not a bad model.

>>> import numpy as np
>>> q = classification_quality(
...     y_true=np.array([1, 0, 1, 1, 0]), y_pred=np.array([1, 0, 0, 1, 1]),
...     positive=1, score=np.array([0.9, 0.2, 0.4, 0.8, 0.6]))
>>> q.accuracy, round(q.precision, 4), round(q.recall, 4), round(q.roc_auc, 4)
(0.6, 0.6667, 0.6667, 0.8333)
>>> r = regression_quality(np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 2.0]))
>>> r.mae, round(r.rmse, 4), r.bias
(0.5, 0.6455, -0.16666666666666666)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

__all__ = [
    "CLASSIFICATION_METRICS",
    "REGRESSION_METRICS",
    "ClassificationQuality",
    "RegressionQuality",
    "classification_quality",
    "expected_calibration_error",
    "log_loss",
    "regression_quality",
    "roc_auc",
]

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "ece")
REGRESSION_METRICS = ("mae", "rmse", "bias")
# Metrics where a larger value is a worse model.
LOWER_IS_BETTER = frozenset({"log_loss", "ece", "mae", "rmse"})

_EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True, slots=True)
class ClassificationQuality:
    """A classifier's quality on ``n`` joined events (``nan`` where undefined)."""

    n: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    roc_auc: float
    log_loss: float
    ece: float

    def get(self, metric: str) -> float:
        """The metric named ``metric`` (one of ``CLASSIFICATION_METRICS``)."""
        value: float = getattr(self, metric)
        return value


@dataclass(frozen=True, slots=True)
class RegressionQuality:
    """A regressor's quality on ``n`` joined events (``nan`` on an empty window)."""

    n: int
    mae: float
    rmse: float
    bias: float

    def get(self, metric: str) -> float:
        """The metric named ``metric`` (one of ``REGRESSION_METRICS``)."""
        value: float = getattr(self, metric)
        return value


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def roc_auc(positive: npt.NDArray[np.bool_], score: npt.NDArray[np.float64]) -> float:
    """Area under the ROC curve of ``score`` for the ``positive`` events.

    >>> roc_auc(np.array([True, False, True, False]), np.array([0.9, 0.1, 0.5, 0.5]))
    0.875
    """
    n_pos = int(np.count_nonzero(positive))
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(score)  # average ranks: ties count one half
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(positive: npt.NDArray[np.bool_], score: npt.NDArray[np.float64]) -> float:
    """Mean negative log-likelihood of the positive-class probability ``score``.

    >>> round(log_loss(np.array([True, False]), np.array([0.8, 0.3])), 6)
    0.289909
    """
    if positive.size == 0:
        return math.nan
    p = np.clip(score, _EPS, 1.0 - _EPS)
    return float(-np.mean(np.where(positive, np.log(p), np.log1p(-p))))


def expected_calibration_error(
    positive: npt.NDArray[np.bool_], score: npt.NDArray[np.float64], n_bins: int = 10
) -> float:
    """Sum over equal-width score bins of (bin share) x |positive rate - mean score|.

    >>> round(expected_calibration_error(np.array([True, False, True, True]),
    ...                                  np.array([0.95, 0.05, 0.95, 0.95])), 12)
    0.05
    """
    if positive.size == 0:
        return math.nan
    # The bins of sklearn's calibration_curve: edges linspace(0, 1, n_bins + 1),
    # searchsorted on the inner edges (a score on an edge goes to the lower bin).
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], score)
    count = np.bincount(bins, minlength=n_bins)
    hits = np.bincount(bins, weights=positive.astype(np.float64), minlength=n_bins)
    mass = np.bincount(bins, weights=score, minlength=n_bins)
    used = count > 0
    gap = np.abs(hits[used] - mass[used])  # = count * |rate - mean score|
    return float(gap.sum() / positive.size)


def classification_quality(
    y_true: npt.NDArray[np.int64],
    y_pred: npt.NDArray[np.int64],
    positive: int,
    score: npt.NDArray[np.float64] | None = None,
    n_bins: int = 10,
    auc: float | None = None,
) -> ClassificationQuality:
    """Quality of class predictions ``y_pred`` (and positive-class ``score``) vs ``y_true``.

    Classes are int codes; ``positive`` is the code of the positive class. Without
    ``score`` the score-based metrics (AUC, log loss, ECE) are ``nan``; ``auc`` is the
    ROC AUC of ``score`` when the caller has it already (DeLong's variance gives it).
    """
    n = int(y_true.size)
    if n == 0:
        nan = math.nan
        return ClassificationQuality(0, nan, nan, nan, nan, nan, nan, nan)
    truth = y_true == positive
    said = y_pred == positive
    tp = float(np.count_nonzero(truth & said))
    fp = float(np.count_nonzero(~truth & said))
    fn = float(np.count_nonzero(truth & ~said))
    accuracy = float(np.count_nonzero(y_true == y_pred)) / n
    loss = ece = math.nan
    if score is None:
        auc = math.nan
    else:
        auc = roc_auc(truth, score) if auc is None else auc
        loss = log_loss(truth, score)
        ece = expected_calibration_error(truth, score, n_bins)
    return ClassificationQuality(
        n=n,
        accuracy=accuracy,
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        roc_auc=auc,
        log_loss=loss,
        ece=ece,
    )


def regression_quality(
    y_true: npt.NDArray[np.float64], y_pred: npt.NDArray[np.float64]
) -> RegressionQuality:
    """MAE, RMSE and bias (mean of ``y_pred - y_true``) of a regressor."""
    n = int(y_true.size)
    if n == 0:
        return RegressionQuality(0, math.nan, math.nan, math.nan)
    err = y_pred - y_true
    return RegressionQuality(
        n=n,
        mae=float(np.mean(np.abs(err))),
        rmse=float(np.sqrt(np.mean(err * err))),
        bias=float(np.mean(err)),
    )
