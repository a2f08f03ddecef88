"""Population Stability Index of a sliding window against a baseline.

    PSI = sum_i (w_i - b_i) ln(w_i / b_i)

over coarse bins: for a numeric field, ``bins`` groups of the baseline's fine
quantile bins holding about equal baseline mass (fewer when ties merge them); for a
categorical field, the ``K`` baseline categories plus one bin for unseen codes.

Smoothing: every bin gets a pseudo-count ``smoothing`` (default 0.5, the
Jeffreys / Krichevsky-Trofimov prior) on both sides, so empty bins stay finite:
``w_i = (c_i + s) / (m + s B)`` and ``b_i = (a_i + s) / (n + s B)`` with window
counts ``c``, baseline counts ``a``, ``B`` coarse bins.

Verdict: PSI is the symmetrised Kullback-Leibler divergence, and under no drift
``n_eff * PSI`` is asymptotically chi-square with ``B - 1`` degrees of freedom
(``n_eff = n m / (n + m)``), which gives the p-value. ``drift`` when
``PSI >= threshold = max(psi_min, chi2.isf(alpha, B - 1) / n_eff)`` with
``alpha = step / (ert * family_size)``. The customary PSI reading: below 0.1 stable,
0.1 to 0.25 moderate shift, above 0.25 major shift; ``psi_min`` defaults to 0.1.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import numpy.typing as npt
from scipy import special, stats

from detectors.base import DetectorError, Finding, FloatArray, IntArray
from detectors.baseline import CategoricalBaseline, NumericBaseline
from detectors.window import WindowedDetector

__all__ = ["PSI", "coarse_starts", "psi_from_counts"]


def coarse_starts(fine_counts: npt.ArrayLike, bins: int) -> IntArray:
    """First fine bin of each coarse bin: ``bins`` groups of about equal mass.

    ``fine_counts``: shape ``(F,)``. Returns strictly increasing int64 indices
    starting at 0, at most ``bins`` of them (for ``np.add.reduceat``).
    """
    c = np.asarray(fine_counts, dtype=np.float64)
    cum = np.cumsum(c) / c.sum()
    # A group ends at the first fine bin whose cumulative mass reaches j / bins.
    ends = np.searchsorted(cum, np.arange(1, bins) / bins - 1e-12, side="left")
    starts = np.unique(np.concatenate([[0], ends + 1]))
    return starts[starts < c.size].astype(np.int64)


def psi_from_counts(
    baseline_counts: npt.ArrayLike, window_counts: npt.ArrayLike, smoothing: float = 0.5
) -> FloatArray:
    """PSI of windows (shape ``(..., B)``) against baseline counts (shape ``(B,)``)."""
    a = np.asarray(baseline_counts, dtype=np.float64)
    c = np.asarray(window_counts, dtype=np.float64)
    B = a.shape[-1]
    b = (a + smoothing) / (a.sum() + smoothing * B)
    w = (c + smoothing) / (c.sum(axis=-1, keepdims=True) + smoothing * B)
    return np.asarray(((w - b) * np.log(w / b)).sum(axis=-1))


class PSI(WindowedDetector):
    """Population Stability Index drift of a numeric or categorical field.

    Parameters
    ----------
    baseline
        ``NumericBaseline`` (fine bins, grouped into ``bins`` coarse bins) or
        ``CategoricalBaseline`` (one bin per category plus one for unseen codes).
    subject
        Field name, copied into findings.
    window_events, step_events, window_seconds, step_seconds, ert, family_size
        As for ``KS``: the window and the false-alarm budget (see ``detectors.window``).
    bins
        Coarse bins for a numeric field, ``>= 2`` (default 10); ignored for categories.
    psi_min
        Effect-size floor on PSI (dimensionless). Default 0.1.
    smoothing
        Pseudo-count added to every bin on both sides, ``> 0``. Default 0.5.

    Findings: ``statistic`` = PSI, ``threshold`` = max(psi_min, critical PSI),
    ``p_value``; details ``n_window``, ``n_baseline``, ``n_eff``, ``alpha``,
    ``psi_critical``, ``bins``.

    Examples
    --------
    >>> import numpy as np
    >>> from detectors.baseline import build_numeric
    >>> rng = np.random.default_rng(7)
    >>> psi = PSI(build_numeric(rng.normal(size=100_000)), subject="temperature")
    >>> stream = np.concatenate([rng.normal(size=20_000), rng.normal(1.0, 1, 20_000)])
    >>> found = [f for i in range(0, 40_000, 1_000) for f in psi.update(stream[i:i + 1_000])]
    >>> first = next(i for i, f in enumerate(found) if f.drift)
    >>> (len(found), first, 10_000 + 1_000 * first - 20_000)  # delay in events
    (31, 14, 4000)
    >>> round(found[first].statistic, 4), found[first].threshold
    (0.1563, 0.1)
    """

    name: ClassVar[str] = "psi"

    def __init__(
        self,
        baseline: NumericBaseline | CategoricalBaseline | None = None,
        subject: str = "",
        window_events: int | None = 10_000,
        step_events: int | None = 1_000,
        window_seconds: float | None = None,
        step_seconds: float | None = None,
        bins: int = 10,
        psi_min: float = 0.1,
        smoothing: float = 0.5,
        ert: float | None = None,
        family_size: int = 1,
    ) -> None:
        if not isinstance(baseline, NumericBaseline | CategoricalBaseline):
            raise DetectorError("PSI needs a NumericBaseline or a CategoricalBaseline")
        if bins < 2:
            raise DetectorError(f"bins must be >= 2, got {bins!r}")
        if psi_min < 0:
            raise DetectorError(f"psi_min must be >= 0, got {psi_min!r}")
        if not smoothing > 0:
            raise DetectorError(f"smoothing must be > 0, got {smoothing!r}")
        self.baseline = baseline
        self.subject = subject
        self.bins = bins
        self.psi_min = psi_min
        self.smoothing = smoothing
        self._init_window_args(
            window_events, step_events, window_seconds, step_seconds, ert, family_size
        )
        fine = (
            np.concatenate([baseline.counts, [0]])
            if isinstance(baseline, CategoricalBaseline)
            else baseline.counts
        )
        if isinstance(baseline, NumericBaseline):
            self._starts = coarse_starts(fine, bins)
        else:
            self._starts = np.arange(fine.size, dtype=np.int64)
        self._base = np.add.reduceat(fine, self._starts).astype(np.int64)
        dof = max(int(self._starts.size) - 1, 1)
        self._chi2_crit = float(stats.chi2.isf(self._alpha, dof))
        self._dof = dof
        self._reset()

    def _reset(self) -> None:
        self._window = self._make_window(self.baseline.bins)

    @property
    def baseline_coarse_counts(self) -> IntArray:
        """Baseline counts on the coarse bins, shape ``(B,)``."""
        return self._base

    def coarsen(self, fine_counts: npt.ArrayLike) -> IntArray:
        """Fine-bin counts (shape ``(..., F)``) summed into coarse bins (``(..., B)``)."""
        return np.add.reduceat(np.asarray(fine_counts), self._starts, axis=-1)

    def critical_psi(self, m: int) -> float:
        """Significance part of the threshold for a window of ``m`` events."""
        n = int(self._base.sum())
        return self._chi2_crit / (n * m / (n + m))

    def drifts(self) -> bool:
        """``evaluate().drift`` without building the finding."""
        if not self._window.ready:
            return False
        counts = self.coarsen(self._window.counts)
        m = int(counts.sum())
        if m == 0:
            return False
        n = int(self._base.sum())
        value = float(psi_from_counts(self._base, counts, self.smoothing))
        return value >= max(self.psi_min, self._chi2_crit / (n * m / (n + m)))

    def drifts_many(self, totals: IntArray, closed: IntArray) -> npt.NDArray[np.bool_]:
        """``drifts()`` of many count windows at once (rows of ``totals``)."""
        coarse = self.coarsen(totals)
        m = coarse.sum(axis=-1).astype(np.float64)
        n = float(self._base.sum())
        value = psi_from_counts(self._base, coarse, self.smoothing)
        n_eff = np.where(m > 0, n * m / (n + m), 1.0)
        threshold = np.maximum(self.psi_min, self._chi2_crit / n_eff)
        ready = np.asarray(closed) >= self._window.ring_size
        return np.asarray(ready & (m > 0) & (value >= threshold))

    def evaluate(self) -> Finding | None:
        """PSI verdict on the current window, or None while it is filling."""
        if not self._window.ready:
            return None
        counts = self.coarsen(self._window.counts)
        m = int(counts.sum())
        if m == 0:
            return None
        n = int(self._base.sum())
        value = float(psi_from_counts(self._base, counts, self.smoothing))
        n_eff = n * m / (n + m)
        crit = self._chi2_crit / n_eff
        threshold = max(self.psi_min, crit)
        return Finding(
            detector=self.name,
            subject=self.subject,
            statistic=value,
            threshold=threshold,
            drift=value >= threshold,
            p_value=float(special.chdtrc(self._dof, n_eff * value)),  # = chi2.sf
            window=self._bounds(m),
            details=self.details(m, n_eff, crit),
        )

    def details(self, m: int, n_eff: float, crit: float) -> tuple[tuple[str, float], ...]:
        """A finding's details for a window of ``m`` events (``evaluate``'s, and the
        drift stage's for verdicts it computes over many fields at once)."""
        return (
            ("n_window", float(m)),
            ("n_baseline", float(int(self._base.sum()))),
            ("n_eff", n_eff),
            ("alpha", self._alpha),
            ("psi_critical", crit),
            ("bins", float(self._starts.size)),
        )
