"""Chi-square (or G) test of a categorical field's window against baseline frequencies.

Codes ``0..K-1`` are the baseline's categories in baseline order; codes ``>= K`` are
categories never seen in the baseline. The goodness-of-fit test runs over the
baseline categories with a positive baseline count (the others count as unseen):

    Pearson:  X2 = sum_i (o_i - e_i)^2 / e_i        G:  G = 2 sum_i o_i ln(o_i / e_i)

with ``o`` the window counts and ``e_i = m_seen q_i`` (``q`` the baseline
proportions, ``m_seen`` the window's events in those categories): the statistic of
``scipy.stats.chisquare`` / ``power_divergence``. The baseline is itself a sample of
``n`` events, which inflates the statistic's null variance by ``1 + m_seen / n``; the
p-value is ``chi2.sf(X2 / (1 + m_seen / n), K' - 1)`` (``K'`` categories tested).

Verdict: ``drift`` when ``X2 >= threshold = max(w_min^2 m_seen,
(1 + m_seen / n) chi2.isf(alpha, K' - 1))`` (effect size as Cohen's
``w = sqrt(X2 / m_seen)``, and significance at ``alpha = step / (ert * family_size)``),
or when the rate of unseen categories in the window exceeds ``max_unseen_rate``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import numpy.typing as npt
from scipy import special, stats

from detectors.base import DetectorError, Finding
from detectors.baseline import CategoricalBaseline
from detectors.window import WindowedDetector

__all__ = ["ChiSquare", "chi2_statistic"]


def chi2_statistic(
    observed: npt.ArrayLike, expected_proportions: npt.ArrayLike, test: str = "pearson"
) -> float:
    """Pearson X2 or G statistic of counts (shape ``(K,)``) against proportions (``(K,)``)."""
    o = np.asarray(observed, dtype=np.float64)
    q = np.asarray(expected_proportions, dtype=np.float64)
    e = o.sum() * q / q.sum()
    if test == "g":
        return float(2.0 * special.xlogy(o, o / np.where(e > 0, e, 1.0)).sum())
    return float(((o - e) ** 2 / e).sum())


class ChiSquare(WindowedDetector):
    """Goodness-of-fit drift of a categorical field's window vs baseline frequencies.

    Parameters
    ----------
    baseline
        ``CategoricalBaseline`` of the field.
    subject
        Field name, copied into findings.
    window_events, step_events, window_seconds, step_seconds, ert, family_size
        As for ``KS``: the window and the false-alarm budget (see ``detectors.window``).
    test
        ``"pearson"`` (chi-square, default) or ``"g"`` (G-test, log-likelihood ratio).
    w_min
        Effect-size floor as Cohen's ``w`` (0.1 small, 0.3 medium). Default 0.1.
    max_unseen_rate
        Share of window events in categories absent from the baseline (0..1) above
        which the verdict is drift on its own. Default 0.01.

    Findings: ``statistic`` = X2 (or G), ``threshold`` on that scale, ``p_value``;
    details ``n_window``, ``n_baseline``, ``dof``, ``alpha``, ``effect_w``,
    ``unseen_rate``, ``unseen_drift`` (1.0 when the unseen rate alone fired).

    Examples
    --------
    >>> import numpy as np
    >>> from detectors.baseline import build_categorical
    >>> rng = np.random.default_rng(7)
    >>> base = build_categorical({"ok": 9000, "warn": 900, "fail": 100},
    ...                          categories=["ok", "warn", "fail"])
    >>> chi2 = ChiSquare(base, subject="status")
    >>> calm = rng.choice(3, size=20_000, p=[0.9, 0.09, 0.01])
    >>> bad = rng.choice(3, size=20_000, p=[0.85, 0.12, 0.03])
    >>> stream = np.concatenate([calm, bad])
    >>> found = [f for i in range(0, 40_000, 1_000) for f in chi2.update(stream[i:i + 1_000])]
    >>> first = next(i for i, f in enumerate(found) if f.drift)
    >>> (len(found), first, 10_000 + 1_000 * first - 20_000)  # delay in events
    (31, 14, 4000)
    >>> found[-1].drift, dict(found[-1].details)["unseen_rate"]
    (True, 0.0)
    """

    name: ClassVar[str] = "chi2"

    def __init__(
        self,
        baseline: CategoricalBaseline | None = None,
        subject: str = "",
        window_events: int | None = 10_000,
        step_events: int | None = 1_000,
        window_seconds: float | None = None,
        step_seconds: float | None = None,
        test: str = "pearson",
        w_min: float = 0.1,
        max_unseen_rate: float = 0.01,
        ert: float | None = None,
        family_size: int = 1,
    ) -> None:
        if not isinstance(baseline, CategoricalBaseline):
            raise DetectorError("ChiSquare needs a CategoricalBaseline")
        if test not in ("pearson", "g"):
            raise DetectorError(f"test must be 'pearson' or 'g', got {test!r}")
        if w_min < 0:
            raise DetectorError(f"w_min must be >= 0, got {w_min!r}")
        if not 0.0 <= max_unseen_rate <= 1.0:
            raise DetectorError(f"max_unseen_rate must be in [0, 1], got {max_unseen_rate!r}")
        self.baseline = baseline
        self.subject = subject
        self.test = test
        self.w_min = w_min
        self.max_unseen_rate = max_unseen_rate
        self._init_window_args(
            window_events, step_events, window_seconds, step_seconds, ert, family_size
        )
        self._tested = baseline.counts > 0  # categories in the test, shape (K,)
        self._q = baseline.counts[self._tested].astype(np.float64)
        self._dof = max(int(self._tested.sum()) - 1, 1)
        self._chi2_crit = float(stats.chi2.isf(self._alpha, self._dof))
        self._reset()

    def _reset(self) -> None:
        self._window = self._make_window(self.baseline.bins)

    def evaluate(self) -> Finding | None:
        """Chi-square verdict on the current window, or None while it is filling."""
        if not self._window.ready:
            return None
        counts = self._window.counts
        m = int(counts.sum())
        if m == 0:
            return None
        K = len(self.baseline.categories)
        observed = counts[:K][self._tested]
        m_seen = int(observed.sum())
        unseen_rate = (m - m_seen) / m
        n = self.baseline.n
        inflation = 1.0 + m_seen / n
        if m_seen > 0 and self._q.size > 1:
            stat = chi2_statistic(observed, self._q, self.test)
        else:
            stat = 0.0
        threshold = max(self.w_min**2 * m_seen, inflation * self._chi2_crit)
        unseen_drift = unseen_rate > self.max_unseen_rate
        p_value = float(special.chdtrc(self._dof, stat / inflation))  # = chi2.sf, ~100x cheaper
        test = f"chi-square {stat:.4g} {'>=' if stat >= threshold else '<'} threshold "
        test += f"{threshold:.4g} (p={p_value:.3g})"
        unseen = f"unseen-category rate {unseen_rate:.3%} "
        unseen += f"{'>' if unseen_drift else '<='} max {self.max_unseen_rate:.3%}"
        summary = f"{unseen}; {test}" if unseen_drift else f"{test}; {unseen}"
        return Finding(
            detector=self.name,
            subject=self.subject,
            statistic=stat,
            threshold=threshold,
            drift=stat >= threshold or unseen_drift,
            p_value=p_value,
            window=self._bounds(m),
            summary=summary,
            details=(
                ("n_window", float(m)),
                ("n_baseline", float(n)),
                ("dof", float(self._dof)),
                ("alpha", self._alpha),
                ("effect_w", math.sqrt(stat / m_seen) if m_seen else 0.0),
                ("unseen_rate", unseen_rate),
                ("unseen_drift", 1.0 if unseen_drift else 0.0),
            ),
        )
