"""Two-sample Kolmogorov-Smirnov drift test of a sliding window against a baseline.

Binned statistic
----------------
With the baseline's left-closed bins ``[e_i, e_{i+1})``, both empirical CDFs are
known exactly at every inner edge as ``P(X < e_i)`` (cumulative bin counts), so

    D_binned = max_i |F_baseline(e_i-) - F_window(e_i-)|

is a maximum over a subset of the points where the exact ``D`` (as computed by
``scipy.stats.ks_2samp``) is a supremum, hence ``D_binned <= D``. Inside bin ``i``
the baseline CDF rises by its bin mass ``p_i`` and the window CDF by ``w_i``, so
the difference moves by at most ``max(p_i, w_i)`` away from its value at the edge:

    0 <= D - D_binned <= max_i max(p_i, w_i)

(the ``resolution`` detail). With 1000 quantile bins and a 10,000-event window
this is about 0.002 (measured: tests/detectors/test_ks.py and bench/RESULTS.md).
On discrete data whose atoms are bin edges the binned statistic is exact.

Exact statistic
---------------
When the baseline keeps its full sample (``build_numeric(..., keep_sample=n)``) and
the count window holds at most ``exact_max_window`` events, the window's raw
values are kept and ``D`` is computed exactly (the same formula as ``ks_2samp``).

Verdict
-------
p-value from the asymptotic Kolmogorov distribution with ``n_eff = n m / (n + m)``
(``n`` baseline values, ``m`` window events): ``p = kolmogorov(sqrt(n_eff) D)``.
``drift`` when ``D >= threshold = max(d_min, kolmogi(alpha) / sqrt(n_eff))``: both
the effect size and the significance at ``alpha = step / (ert * family_size)``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import numpy.typing as npt
from scipy import special

from detectors.base import DetectorError, Finding, FloatArray, IntArray
from detectors.baseline import NumericBaseline
from detectors.window import WindowedDetector

__all__ = ["KS", "ks_exact", "ks_from_counts", "ks_resolution"]


def ks_from_counts(baseline_cdf: FloatArray, window_counts: npt.ArrayLike) -> FloatArray:
    """Binned KS ``D`` of windows against a baseline.

    ``baseline_cdf``: shape ``(B - 1,)``, baseline ``P(X < e_i)`` at the inner edges.
    ``window_counts``: shape ``(..., B)``, bin counts of one or more windows.
    Returns shape ``(...)``.
    """
    c = np.asarray(window_counts, dtype=np.float64)
    m = c.sum(axis=-1, keepdims=True)
    cw = np.cumsum(c[..., :-1], axis=-1) / np.where(m > 0, m, 1.0)
    return np.asarray(np.abs(cw - baseline_cdf).max(axis=-1, initial=0.0))


def ks_resolution(baseline_counts: npt.ArrayLike, window_counts: npt.ArrayLike) -> FloatArray:
    """Bound on ``D_exact - D_binned``: ``max_i max(p_i, w_i)``, shape ``(...)``."""
    b = np.asarray(baseline_counts, dtype=np.float64)
    w = np.asarray(window_counts, dtype=np.float64)
    m = np.maximum(w.sum(axis=-1, keepdims=True), 1.0)
    return np.asarray(np.maximum(b / b.sum(), w / m).max(axis=-1))


def ks_exact(sorted_sample: FloatArray, window_values: npt.ArrayLike) -> float:
    """Exact two-sample ``D`` (``sorted_sample`` ascending, shape ``(n,)``)."""
    w = np.sort(np.asarray(window_values, dtype=np.float64))
    if w.size == 0 or sorted_sample.size == 0:
        return 0.0
    points = np.concatenate([sorted_sample, w])
    f1 = np.searchsorted(sorted_sample, points, side="right") / sorted_sample.size
    f2 = np.searchsorted(w, points, side="right") / w.size
    return float(np.abs(f1 - f2).max())


class KS(WindowedDetector):
    """Kolmogorov-Smirnov drift of a numeric field's sliding window vs its baseline.

    Parameters
    ----------
    baseline
        ``NumericBaseline`` of the field (fine quantile bins).
    subject
        Field name, copied into findings.
    window_events, step_events
        Count window: verdict every ``step_events`` events on the last
        ``window_events`` (a multiple of the step). Defaults 10,000 and 1,000.
    window_seconds, step_seconds
        Event-time window instead (seconds; ``update`` then needs ``times``).
    d_min
        Effect-size floor on ``D`` (a CDF distance, 0..1); must exceed the binning
        resolution (about 0.002 with 1000 bins). Default 0.02.
    ert
        Expected run length between false alarms of this detector, in events
        (count window; default 1e10) or seconds (time window; default ten years).
    family_size
        Detectors sharing the ``ert`` budget (fields x detectors); default 1.
    exact_max_window
        Keep raw window values and compute ``D`` exactly when the baseline keeps its
        full sample and ``window_events <= exact_max_window``. Default 20,000.

    Findings: ``statistic`` = D, ``threshold`` = max(d_min, critical D), ``p_value``;
    details ``n_window``, ``n_baseline``, ``n_eff``, ``alpha``, ``d_critical``,
    ``resolution`` (bound on the binning error), ``exact`` (1.0 or 0.0).

    Examples
    --------
    >>> import numpy as np
    >>> from detectors.baseline import build_numeric
    >>> rng = np.random.default_rng(7)
    >>> ks = KS(build_numeric(rng.normal(size=100_000)), subject="temperature")
    >>> stream = np.concatenate([rng.normal(size=20_000), rng.normal(0.25, 1, 20_000)])
    >>> found = [f for i in range(0, 40_000, 1_000) for f in ks.update(stream[i:i + 1_000])]
    >>> first = next(i for i, f in enumerate(found) if f.drift)
    >>> (len(found), first, 10_000 + 1_000 * first - 20_000)  # delay in events
    (31, 13, 3000)
    >>> round(found[first].statistic, 4), round(found[first].threshold, 4)
    (0.0384, 0.0304)
    """

    name: ClassVar[str] = "ks"

    def __init__(
        self,
        baseline: NumericBaseline | None = None,
        subject: str = "",
        window_events: int | None = 10_000,
        step_events: int | None = 1_000,
        window_seconds: float | None = None,
        step_seconds: float | None = None,
        d_min: float = 0.02,
        ert: float | None = None,
        family_size: int = 1,
        exact_max_window: int = 20_000,
    ) -> None:
        if not isinstance(baseline, NumericBaseline):
            raise DetectorError("KS needs a NumericBaseline")
        if not 0.0 <= d_min < 1.0:
            raise DetectorError(f"d_min must be in [0, 1), got {d_min!r}")
        if exact_max_window < 0:
            raise DetectorError(f"exact_max_window must be >= 0, got {exact_max_window!r}")
        self.baseline = baseline
        self.subject = subject
        self.d_min = d_min
        self.exact_max_window = exact_max_window
        self._init_window_args(
            window_events, step_events, window_seconds, step_seconds, ert, family_size
        )
        self._exact = (
            baseline.full_sample
            and window_seconds is None
            and window_events is not None
            and window_events <= exact_max_window
        )
        counts = baseline.counts.astype(np.float64)
        self._cdf = np.cumsum(counts[:-1]) / baseline.n
        self._p_max = float((counts / counts.sum()).max())
        self._crit = float(special.kolmogi(self._alpha))
        self._reset()

    def _reset(self) -> None:
        self._window = self._make_window(self.baseline.bins, keep_values=self._exact)

    def critical_d(self, m: int) -> float:
        """Significance part of the threshold for a window of ``m`` events."""
        n = self.baseline.n
        return self._crit / math.sqrt(n * m / (n + m))

    def drifts(self) -> bool:
        """``evaluate().drift`` without building the finding."""
        if self._exact:
            return super().drifts()
        if not self._window.ready:
            return False
        counts = self._window.counts
        m = int(counts.sum())
        if m == 0:
            return False
        n = self.baseline.n
        d = float(ks_from_counts(self._cdf, counts))
        return d >= max(self.d_min, self._crit / math.sqrt(n * m / (n + m)))

    def drifts_many(self, totals: IntArray, closed: IntArray) -> npt.NDArray[np.bool_]:
        """``drifts()`` of many count windows at once (rows of ``totals``)."""
        if self._exact:
            return super().drifts_many(totals, closed)
        m = totals.sum(axis=-1).astype(np.float64)
        n = float(self.baseline.n)
        d = ks_from_counts(self._cdf, totals)
        n_eff = n * m / (n + m)
        threshold = np.maximum(self.d_min, self._crit / np.sqrt(np.where(m > 0, n_eff, 1.0)))
        ready = np.asarray(closed) >= self._window.ring_size
        return np.asarray(ready & (m > 0) & (d >= threshold))

    def details(
        self, m: int, n_eff: float, d_crit: float, resolution: float
    ) -> tuple[tuple[str, float], ...]:
        """A finding's details for a window of ``m`` events (``evaluate``'s, and the
        drift stage's for verdicts it computes over many fields at once)."""
        return (
            ("n_window", float(m)),
            ("n_baseline", float(self.baseline.n)),
            ("n_eff", n_eff),
            ("alpha", self._alpha),
            ("d_critical", d_crit),
            ("resolution", resolution),
            ("exact", 1.0 if self._exact else 0.0),
        )

    def evaluate(self) -> Finding | None:
        """KS verdict on the current window, or None while it is filling."""
        if not self._window.ready:
            return None
        counts: IntArray = self._window.counts
        m = int(counts.sum())
        if m == 0:
            return None
        n = self.baseline.n
        if self._exact:
            assert self.baseline.sample is not None
            d = ks_exact(self.baseline.sample, self._window.values())
        else:
            d = float(ks_from_counts(self._cdf, counts))
        n_eff = n * m / (n + m)
        d_crit = self._crit / math.sqrt(n_eff)
        threshold = max(self.d_min, d_crit)
        p = float(special.kolmogorov(math.sqrt(n_eff) * d))
        # ks_resolution(baseline counts, counts): max_i max(p_i, w_i / m) is the larger
        # of the two maxima, and the baseline's is fixed.
        resolution = 0.0 if self._exact else max(self._p_max, float(counts.max()) / m)
        details = self.details(m, n_eff, d_crit, resolution)
        return Finding(
            detector=self.name,
            subject=self.subject,
            statistic=d,
            threshold=threshold,
            drift=d >= threshold,
            p_value=p,
            window=self._bounds(m),
            details=details,
        )
