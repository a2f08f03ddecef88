"""Quality metrics, drop tests and CBPE against scikit-learn / scipy / direct computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from sklearn.isotonic import IsotonicRegression

from detectors.cbpe import CBPE, isotonic_fit
from detectors.quality import (
    classification_quality,
    expected_calibration_error,
    regression_quality,
)
from detectors.quality_drop import (
    AccuracyDrop,
    AUCDrop,
    ECERise,
    F1Drop,
    calibration_sums,
    delong_auc_variance,
    f1_variance,
)


@pytest.mark.parametrize("seed", range(5))
def test_classification_equals_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 3000))
    score = np.round(rng.uniform(0, 1, n), 2)  # ties on purpose
    y_true = (rng.uniform(0, 1, n) < score).astype(np.int64)
    y_pred = (score >= 0.5).astype(np.int64)
    if seed == 4:
        score[:5] = [0.0, 1.0, 0.0, 1.0, 0.3]  # exercise the log-loss clip
    q = classification_quality(y_true, y_pred, positive=1, score=score)
    assert q.accuracy == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-12)
    assert q.precision == pytest.approx(skm.precision_score(y_true, y_pred), abs=1e-12)
    assert q.recall == pytest.approx(skm.recall_score(y_true, y_pred), abs=1e-12)
    assert q.f1 == pytest.approx(skm.f1_score(y_true, y_pred), abs=1e-12)
    assert q.roc_auc == pytest.approx(skm.roc_auc_score(y_true, score), abs=1e-12)
    assert q.log_loss == pytest.approx(skm.log_loss(y_true, score, labels=[0, 1]), abs=1e-12)
    prob_true, prob_pred = calibration_curve(y_true, score, n_bins=10, strategy="uniform")
    bins = np.searchsorted(np.linspace(0, 1, 11)[1:-1], score)
    counts = np.bincount(bins, minlength=10)
    counts = counts[counts > 0]
    expected_ece = float(np.sum(counts / n * np.abs(prob_true - prob_pred)))
    assert q.ece == pytest.approx(expected_ece, abs=1e-12)


def test_multiclass_one_vs_rest_equals_sklearn() -> None:
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 3, 1000)
    y_pred = np.where(rng.uniform(0, 1, 1000) < 0.7, y_true, rng.integers(0, 3, 1000))
    q = classification_quality(y_true, y_pred, positive=2)
    assert q.accuracy == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert q.precision == pytest.approx(
        skm.precision_score(y_true, y_pred, labels=[2], average="macro")
    )
    assert q.recall == pytest.approx(skm.recall_score(y_true, y_pred, labels=[2], average="macro"))
    assert q.f1 == pytest.approx(skm.f1_score(y_true, y_pred, labels=[2], average="macro"))
    assert math.isnan(q.roc_auc)


def test_undefined_metrics_are_nan() -> None:
    q = classification_quality(np.array([0, 0]), np.array([0, 0]), 1, np.array([0.1, 0.2]))
    assert q.accuracy == 1.0
    assert math.isnan(q.precision) and math.isnan(q.recall) and math.isnan(q.roc_auc)
    empty = classification_quality(np.array([], np.int64), np.array([], np.int64), 1)
    assert empty.n == 0 and math.isnan(empty.accuracy)
    assert math.isnan(regression_quality(np.array([]), np.array([])).mae)
    assert math.isnan(expected_calibration_error(np.array([], bool), np.array([])))


@pytest.mark.parametrize("seed", range(3))
def test_regression_equals_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.normal(10, 3, 2000)
    p = y + rng.normal(0.3, 1, 2000)
    r = regression_quality(y, p)
    assert r.mae == pytest.approx(skm.mean_absolute_error(y, p), abs=1e-12)
    assert r.rmse == pytest.approx(skm.root_mean_squared_error(y, p), abs=1e-12)
    assert r.bias == pytest.approx(float(np.mean(p - y)), abs=1e-12)


def test_binomial_drop_equals_scipy() -> None:
    drop = AccuracyDrop(0.9, None, false_alerts=1.0, per_events=1_000_000, step=500)
    for k in (4400, 4480, 4500, 4550):
        t = drop.test(k, 5000)
        p = binomtest(k, 5000, 0.9, alternative="less").pvalue
        assert t.p_value == pytest.approx(p, rel=1e-9)
        assert t.drift == (p < drop.alpha)


def test_two_proportion_z() -> None:
    drop = AccuracyDrop(45_000, 50_000, false_alerts=1.0, per_events=1_000_000, step=500)
    t = drop.test(4400, 5000)
    se = math.sqrt(0.88 * 0.12 / 5000 + 0.9 * 0.1 / 50_000)
    assert t.statistic == pytest.approx(0.02)
    from scipy.stats import norm

    assert t.p_value == pytest.approx(norm.sf(0.02 / se))
    with pytest.raises(ValueError, match="false_alerts"):
        AccuracyDrop(0.9, None, false_alerts=0)


def test_delong_variance_matches_definition() -> None:
    rng = np.random.default_rng(11)
    pos = rng.uniform(0, 1, 300) < 0.4
    score = np.round(np.where(pos, rng.normal(1, 1, 300), rng.normal(0, 1, 300)), 1).astype(
        np.float64
    )
    auc, var = delong_auc_variance(pos, score)
    x, y = score[pos], score[~pos]
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])  # O(mn) definition
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    expected = np.var(v10, ddof=1) / x.size + np.var(v01, ddof=1) / y.size
    assert auc == pytest.approx(skm.roc_auc_score(pos, score))
    assert var == pytest.approx(expected, rel=1e-10)
    test = AUCDrop(reference_auc=0.95, step=500).test(pos, score)
    assert test.drift and test.value == pytest.approx(auc)


def test_isotonic_equals_sklearn() -> None:
    rng = np.random.default_rng(5)
    s = np.round(rng.uniform(0, 1, 3000), 3)
    y = rng.uniform(0, 1, 3000) < s**2
    x, fitted = isotonic_fit(s, y)
    iso = IsotonicRegression(out_of_bounds="clip").fit(s, y.astype(float))
    probe = np.linspace(-0.1, 1.1, 500)
    np.testing.assert_allclose(np.interp(probe, x, fitted), iso.predict(probe), atol=1e-12)


@pytest.mark.parametrize("method", ["isotonic", "histogram"])
def test_cbpe_estimates_realized_accuracy(method: str) -> None:
    """A calibrated model (its scores are the true probabilities after a monotone
    distortion): CBPE's accuracy within 0.01 (+3 standard errors) of the realized one,
    also after a covariate shift of the scores (histogram binning: 50 equal-frequency bins;
    coarser bins bias the estimate where the scores concentrate near the threshold)."""
    rng = np.random.default_rng(1)
    ref_p = rng.beta(2, 2, 50_000)
    ref_y = rng.uniform(0, 1, ref_p.size) < ref_p
    raw = ref_p**1.7  # a miscalibrated but monotone score
    cbpe = CBPE(raw, ref_y, threshold=0.5**1.7, method=method, n_bins=50)  # type: ignore[arg-type]
    for a, b in ((2, 2), (5, 5), (0.7, 0.7)):  # stationary, then shifted inputs
        p = rng.beta(a, b, 20_000)
        y = rng.uniform(0, 1, p.size) < p
        score = p**1.7
        said = score >= cbpe.threshold
        est = cbpe.estimate(score, said)
        realized = classification_quality(y.astype(np.int64), said.astype(np.int64), 1)
        assert abs(est.accuracy - realized.accuracy) < 0.01 + 3 * est.accuracy_se
        assert abs(est.precision - realized.precision) < 0.02
        assert abs(est.recall - realized.recall) < 0.02
        # direct computation of the expected accuracy from the true probabilities
        direct = float(np.mean(np.where(said, p, 1 - p)))
        assert est.accuracy == pytest.approx(direct, abs=0.01)


def test_cbpe_sums_add() -> None:
    rng = np.random.default_rng(2)
    s = rng.uniform(0, 1, 4000)
    cbpe = CBPE(s, rng.uniform(0, 1, 4000) < s)
    whole = cbpe.window_sums(s)
    parts = cbpe.window_sums(s[:1000]) + cbpe.window_sums(s[1000:])
    np.testing.assert_allclose(whole, parts)
    assert CBPE.from_sums(np.zeros(6)).n == 0


def test_f1_drop_equals_sklearn_and_its_variance_the_sampling_variance() -> None:
    """F1 as sklearn's; the delta-method variance within 5% of the variance of
    sklearn's F1 over 400 windows drawn from the same model (and of 20,000 by counts)."""
    rng = np.random.default_rng(12)
    cells = np.array([0.30, 0.08, 0.12, 0.50])  # TP, FP, FN, TN
    n = 2000
    y_true = np.array([1, 0, 1, 0])
    y_pred = np.array([1, 1, 0, 0])
    values = []
    for _ in range(400):
        cell = rng.choice(4, n, p=cells)
        f1 = skm.f1_score(y_true[cell], y_pred[cell])
        tp, fp, fn, _ = np.bincount(cell, minlength=4).tolist()
        assert f1_variance(tp, fp, fn)[0] == pytest.approx(f1, abs=1e-12)
        values.append(f1)
    counts = rng.multinomial(n, cells, size=20_000)
    f1s = 2 * counts[:, 0] / (2 * counts[:, 0] + counts[:, 1] + counts[:, 2])
    _, var = f1_variance(*(cells[:3] * n))
    assert var == pytest.approx(np.var(f1s), rel=0.05)
    assert var == pytest.approx(np.var(values), rel=0.2)  # 400 draws: +-14% at 2 sd
    t = F1Drop(3000, 800, 1200, step=500, min_drop=0.01)
    got = t.test(280, 120, 140)
    assert got.value == pytest.approx(560 / 820) and got.reference == pytest.approx(0.75)
    assert got.drift and not t.test(300, 80, 120).drift
    assert math.isnan(t.test(0, 0, 0).value) and not t.test(0, 0, 0).drift
    with pytest.raises(ValueError, match="no F1"):
        F1Drop(0, 0, 0)


def test_ece_rise_reference_is_the_window_ece_and_a_calibrated_window_passes() -> None:
    rng = np.random.default_rng(13)
    q = rng.beta(2, 3, 40_000)
    y = rng.uniform(0, 1, q.size) < np.clip(q * 1.1, 0, 1)  # slightly under-confident
    t = ECERise(calibration_sums(y, q), step=500, min_drop=0.01)
    ref = classification_quality(y.astype(np.int64), (q >= 0.5).astype(np.int64), 1, q)
    assert t.reference_ece == pytest.approx(ref.ece, abs=1e-12)
    w = rng.beta(2, 3, 5000)
    wy = rng.uniform(0, 1, w.size) < np.clip(w * 1.1, 0, 1)
    same = t.test(wy, w)
    assert same.value == pytest.approx(expected_calibration_error(wy, w), abs=1e-12)
    assert not same.drift and same.p_value > 0.01
    worse = t.test(rng.uniform(0, 1, w.size) < w * 0.6, w)
    assert worse.drift and worse.statistic > 0.1
    shifted = rng.beta(4, 2, 5000)  # covariate shift, same calibration: no alarm
    assert not t.test(rng.uniform(0, 1, shifted.size) < np.clip(shifted * 1.1, 0, 1), shifted).drift
    assert not t.test(np.zeros(0, bool), np.zeros(0)).drift


@pytest.mark.parametrize("method", ["isotonic", "histogram"])
def test_multiclass_cbpe_is_the_mean_calibrated_confidence(method: str) -> None:
    """A 4-class model whose probabilities are over-confident (temperature 0.6): CBPE
    calibrates its confidence on being right in the reference, and its expected
    accuracy (the mean calibrated confidence) is within 0.01 (+3 standard errors) of
    the realized accuracy and of the direct computation (the mean true probability of
    the predicted class), also after shifts of the inputs that keep P(right |
    confidence), the assumption of top-label CBPE (more or fewer confident cases)."""
    rng = np.random.default_rng(9)
    logits = rng.normal(0, 1.5, (200_000, 4))
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.minimum((rng.uniform(0, 1, (p.shape[0], 1)) > p.cumsum(axis=1)).sum(axis=1), 3)
    shown = np.exp(logits / 0.6) / np.exp(logits / 0.6).sum(axis=1, keepdims=True)
    conf, pred = shown.max(axis=1), shown.argmax(axis=1)
    ref = slice(0, 50_000)
    cbpe = CBPE(conf[ref], pred[ref] == y[ref], 0.0, method=method, n_bins=50)  # type: ignore[arg-type]
    rest = np.arange(50_000, p.shape[0])
    for keep in (np.ones_like(conf), conf**3, 1.2 - conf):  # stationary, then shifted
        sel = rest[rng.uniform(0, 1, rest.size) < keep[rest] / keep[rest].max()][:20_000]
        est = cbpe.estimate(conf[sel], np.ones(sel.size, bool))
        realized = skm.accuracy_score(y[sel], pred[sel])
        assert abs(est.accuracy - realized) < 0.01 + 3 * est.accuracy_se
        direct = float(np.mean(p[sel, pred[sel]]))
        assert est.accuracy == pytest.approx(direct, abs=0.01)


def test_cbpe_isotonic_knots_give_the_full_fit() -> None:
    rng = np.random.default_rng(6)
    s = rng.uniform(0, 1, 20_000)
    y = rng.uniform(0, 1, s.size) < s
    cbpe = CBPE(s, y)
    x, fitted = isotonic_fit(s, y)
    assert cbpe._x.size < x.size // 10
    probe = np.concatenate([rng.uniform(-0.1, 1.1, 5000), x])
    np.testing.assert_array_equal(cbpe.calibrate(probe), np.interp(probe, x, fitted))
