"""Data-quality drift: a field's null, unseen-category, out-of-range and invalid rates
in a sliding window against the baseline's rates.

Every accepted event contributes one outcome per field, binned by kind
(``QUALITY_KINDS``: ok, null, unseen_category, out_of_range, wrong_type,
non_finite), so the window is a ``SlidingCounts`` like any binned detector's: it is
kept per partition, merges by addition and is checkpointed exactly.

Test, per kind ``k`` (one-sided: only a *rise* is drift): the pooled two-proportion
z statistic of the window's ``c_k`` of ``m`` events against the baseline's ``b_k`` of
``n``,

    z_k = (c_k/m - b_k/n) / sqrt(p (1 - p) (1/m + 1/n)),   p = (c_k + b_k) / (m + n)

(``z_k^2`` is the uncorrected chi-square statistic of the 2x2 table, as
``scipy.stats.chi2_contingency(..., correction=False)`` computes it). The five kinds
share the detector's level by Bonferroni: ``drift`` when for some kind
``z_k >= z_crit = Phi^-1(1 - alpha / 5)`` and the rate rose by at least
``min_increase`` (absolute), with ``alpha = step / (ert * family_size)`` as for every
binned detector. ``statistic`` is the largest ``z_k`` among the kinds that rose by
``min_increase`` (else the largest overall), ``threshold`` is ``z_crit``; the summary
names the kind, both rates, and both conditions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import numpy.typing as npt
from numba import njit
from scipy import special, stats

from detectors.base import DetectorError, Finding, IntArray
from detectors.baseline import QUALITY_KINDS, QualityBaseline
from detectors.window import WindowedDetector

__all__ = ["QualityRates", "quality_summary", "rate_z"]


@njit(cache=True, nogil=True, error_model="numpy")
def rate_z(count: float, m: float, base_count: float, n: float) -> float:
    """Pooled two-proportion z of ``count / m`` against ``base_count / n`` (0 if undefined).

    >>> round(rate_z(220, 1000, 1000, 10_000), 3)
    11.522
    """
    if m <= 0 or n <= 0:
        return 0.0
    p = (count + base_count) / (m + n)
    var = p * (1.0 - p) * (1.0 / m + 1.0 / n)
    if var <= 0:
        return 0.0
    return (count / m - base_count / n) / math.sqrt(var)


def _rate_z_many(
    count: npt.NDArray[np.float64], m: float, base_count: npt.NDArray[np.float64], n: float
) -> npt.NDArray[np.float64]:
    """``rate_z`` of every kind at once (the same operations, element by element)."""
    if m <= 0 or n <= 0:
        return np.zeros(count.shape)
    p = (count + base_count) / (m + n)
    var = p * (1.0 - p) * (1.0 / m + 1.0 / n)
    ok = var > 0
    return np.where(ok, (count / m - base_count / n) / np.sqrt(np.where(ok, var, 1.0)), 0.0)


def quality_summary(
    kind: str,
    rate: float,
    base_rate: float,
    z: float,
    threshold: float,
    rise: float,
    enough: bool,
    min_increase: float,
) -> str:
    """The sentence of a data-quality finding (true as written: each comparison is
    the one that holds).

    >>> quality_summary("null", 0.22, 0.1, 9.5, 4.2, 0.12, True, 0.01)
    'null rate 22.00% vs baseline 10.00%; z 9.5 >= threshold 4.2; rise 12.00 points >= minimum 1.00'
    """
    return (
        f"{kind} rate {rate:.2%} vs baseline {base_rate:.2%}; "
        f"z {z:.4g} {'>=' if z >= threshold else '<'} threshold "
        f"{threshold:.4g}; rise {rise * 100:.2f} points "
        f"{'>=' if enough else '<'} minimum {min_increase * 100:.2f}"
    )


class QualityRates(WindowedDetector):
    """Rise of a field's null / unseen / out-of-range / invalid rates over the baseline's.

    Parameters
    ----------
    baseline
        The field's ``QualityBaseline`` (reference counts per kind).
    subject
        Field name, copied into findings.
    window_events, step_events, window_seconds, step_seconds, ert, family_size
        As for ``KS`` (see ``detectors.window``).
    min_increase
        Effect-size floor: the rate must rise by at least this much (absolute, 0..1).
        Default 0.01 (one percentage point).

    ``update`` takes outcome codes (indices into ``QUALITY_KINDS``), one per event.
    Findings: ``statistic`` = largest z, ``threshold`` = z_crit, ``p_value`` (Bonferroni
    over the kinds); details ``n_window``, ``n_baseline``, ``alpha``, and per kind
    ``rate_<kind>`` and ``baseline_rate_<kind>``.

    Examples
    --------
    >>> import numpy as np
    >>> base = QualityBaseline(np.array([90_000, 10_000, 0, 0, 0, 0]))
    >>> q = QualityRates(base, subject="humidity")
    >>> rng = np.random.default_rng(1)
    >>> calm = (rng.random(20_000) < 0.10).astype(np.int64)       # 10% nulls
    >>> worse = (rng.random(20_000) < 0.22).astype(np.int64)      # 22% nulls
    >>> found = [f for i in range(0, 20_000, 1_000) for f in q.update(calm[i:i + 1_000])]
    >>> any(f.drift for f in found)
    False
    >>> found = [f for i in range(0, 20_000, 1_000) for f in q.update(worse[i:i + 1_000])]
    >>> next(i for i, f in enumerate(found) if f.drift)  # steps into the rise
    1
    >>> found[1].summary.split(";")[0]
    'null rate 12.76% vs baseline 10.00%'
    """

    name: ClassVar[str] = "data_quality"

    def __init__(
        self,
        baseline: QualityBaseline | None = None,
        subject: str = "",
        window_events: int | None = 10_000,
        step_events: int | None = 1_000,
        window_seconds: float | None = None,
        step_seconds: float | None = None,
        min_increase: float = 0.01,
        ert: float | None = None,
        family_size: int = 1,
    ) -> None:
        if not isinstance(baseline, QualityBaseline):
            raise DetectorError("the quality detector needs a QualityBaseline")
        if not 0.0 <= min_increase < 1.0:
            raise DetectorError(f"min_increase must be in [0, 1), got {min_increase!r}")
        self.baseline = baseline
        self.subject = subject
        self.min_increase = min_increase
        self._init_window_args(
            window_events, step_events, window_seconds, step_seconds, ert, family_size
        )
        self._kinds = len(QUALITY_KINDS) - 1
        self._z_crit = float(stats.norm.isf(self._alpha / self._kinds))
        self._reset()

    def _reset(self) -> None:
        self._window = self._make_window(len(QUALITY_KINDS))

    def _bin(self, values: object) -> np.ndarray:  # outcome codes are their own bins
        codes = np.asarray(values, dtype=np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= len(QUALITY_KINDS)):
            raise DetectorError("quality outcome codes must be in 0..5")
        return codes

    def drifts_many(self, totals: IntArray, closed: IntArray) -> npt.NDArray[np.bool_]:
        """``evaluate().drift`` of many count windows at once (rows of ``totals``):
        some kind rose by ``min_increase`` with ``z >= z_crit``."""
        c = np.asarray(totals, dtype=np.float64)
        m = c.sum(axis=-1, keepdims=True)
        base = self.baseline.counts.astype(np.float64)
        n = float(base.sum())
        safe_m = np.where(m > 0, m, 1.0)
        p = (c + base) / (safe_m + n)
        var = p * (1.0 - p) * (1.0 / safe_m + 1.0 / n)
        rise = c / safe_m - base / n
        z = np.where(var > 0, rise / np.sqrt(np.where(var > 0, var, 1.0)), 0.0)
        hit = (rise >= self.min_increase) & (z >= self._z_crit)
        ready = np.asarray(closed) >= self._window.ring_size
        return np.asarray(ready & (m[:, 0] > 0) & hit[:, 1:].any(axis=-1))

    def details(
        self, m: int, rates: Sequence[float], base_rates: Sequence[float]
    ) -> tuple[tuple[str, float], ...]:
        """A finding's details for a window of ``m`` events with these rates per kind
        (``evaluate``'s, and the drift stage's for verdicts it computes over many
        fields at once)."""
        details: tuple[tuple[str, float], ...] = (
            ("n_window", float(m)),
            ("n_baseline", float(int(self.baseline.counts.sum()))),
            ("alpha", self._alpha),
        )
        for k in range(1, len(QUALITY_KINDS)):
            details += (
                (f"rate_{QUALITY_KINDS[k]}", float(rates[k])),
                (f"baseline_rate_{QUALITY_KINDS[k]}", float(base_rates[k])),
            )
        return details

    def evaluate(self) -> Finding | None:
        """Verdict on the current window, or None while it is filling."""
        if not self._window.ready:
            return None
        counts = self._window.counts
        m = int(counts.sum())
        if m == 0:
            return None
        base = self.baseline.counts
        n = int(base.sum())
        rates = counts / m
        base_rates = base / n
        z = _rate_z_many(counts.astype(np.float64), float(m), base.astype(np.float64), float(n))
        rises = rates - base_rates
        z[0] = -np.inf  # "ok" is not a problem kind
        enough = rises >= self.min_increase
        # The kind that decides: the largest z among rates that rose enough, else overall.
        best_k = int(np.argmax(np.where(enough, z, -np.inf))) if enough[1:].any() else 0
        if best_k == 0:
            best_k = int(np.argmax(z))
        best = float(z[best_k])
        drift = bool(enough[best_k]) and best >= self._z_crit
        kind = QUALITY_KINDS[best_k].replace("_", " ")
        p_value = min(1.0, float(special.ndtr(-best)) * self._kinds)  # ndtr(-z) = norm.sf(z)
        rise = float(rises[best_k])
        summary = quality_summary(
            kind,
            rates[best_k],
            base_rates[best_k],
            best,
            self._z_crit,
            rise,
            bool(enough[best_k]),
            self.min_increase,
        )
        details = self.details(m, rates.tolist(), base_rates.tolist())
        return Finding(
            detector=self.name,
            subject=self.subject,
            statistic=best,
            threshold=self._z_crit,
            drift=drift,
            p_value=p_value,
            window=self._bounds(m),
            details=details,
            summary=summary,
        )
