"""``drifts_many`` (the decision alone, many windows at once) agrees with ``evaluate``."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.baseline import QualityBaseline, build_categorical, build_numeric
from detectors.categorical import ChiSquare
from detectors.data_quality import QualityRates
from detectors.ks import KS
from detectors.psi import PSI

_RNG = np.random.default_rng(5)


@pytest.mark.parametrize("name", ["ks", "psi", "data_quality", "chi2"])
def test_drifts_many_equals_evaluate(name: str) -> None:
    window = {"window_events": 2_000, "step_events": 500}
    if name in ("ks", "psi"):
        base = build_numeric(_RNG.normal(size=20_000))
        det = (KS if name == "ks" else PSI)(base, subject="x", **window)
        top = 0.3 if name == "ks" else 1.0
        draws = [base.bin_index(_RNG.normal(s, 1.0, 2_000)) for s in np.linspace(0, top, 40)]
        bins = base.bins
    elif name == "data_quality":
        det = QualityRates(QualityBaseline(np.array([900, 100, 0, 0, 0, 0])), "x", **window)
        draws = [(_RNG.random(2_000) < r).astype(np.int64) for r in np.linspace(0.08, 0.2, 40)]
        bins = 6
    else:
        base = build_categorical({"a": 700, "b": 300}, categories=["a", "b"])
        det = ChiSquare(base, subject="x", **window)
        draws = [(_RNG.random(2_000) < r).astype(np.int64) for r in np.linspace(0.3, 0.5, 40)]
        bins = base.bins
    totals = np.stack([np.bincount(d, minlength=bins) for d in draws])
    closed = np.where(np.arange(40) < 3, 2, 4)  # the first three windows are not full
    screened = det.drifts_many(totals, closed)
    direct = []
    for t, k in zip(totals, closed, strict=True):
        det.load_counts(t, int(k))
        finding = det.evaluate()
        direct.append(finding is not None and finding.drift)
    assert screened.tolist() == direct
    assert any(direct) and not all(direct)
