"""Compiled screens of many PSI and data-quality verdicts at many window positions.

The drift stage judges every field at every step boundary of a batch. A screen says,
from the windows' counts alone, which verdicts may drift (a superset: a relative
slack on the threshold); the detector's own ``evaluate`` then decides each flagged
one. These kernels compute, per (boundary, item), the same statistic and threshold
as ``PSI.drifts_many`` and ``QualityRates.drifts_many``, in one pass over the counts
with no temporary arrays (the numpy forms made ~40 small arrays per batch).

>>> import numpy as np
>>> totals = np.array([[25, 25, 25, 25], [0, 0, 50, 50]])  # two windows, one item
>>> psi_screens(totals, np.array([0, 1, 2, 3]), np.array([1, 2, 3, 4]),
...     np.array([0, 4]), np.array([0.5]), np.full(4, 0.25), np.array([1000.0]),
...     np.array([0.1]), np.array([10.0]), np.array([True, True]), 1.0).tolist()
[[False], [True]]
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numba import njit

from detectors.base import FloatArray, IntArray
from detectors.data_quality import rate_z

__all__ = ["psi_screens", "quality_screens"]


@njit(cache=True, nogil=True, error_model="numpy")
def _psi(
    totals: IntArray,
    g_start: IntArray,
    g_end: IntArray,
    offsets: IntArray,
    smooth: FloatArray,
    b: FloatArray,
    n_base: FloatArray,
    psi_min: FloatArray,
    crit: FloatArray,
    ready: npt.NDArray[np.bool_],
    slack: float,
    counts: FloatArray,
    out: npt.NDArray[np.bool_],
) -> None:  # pragma: no cover - compiled
    for c in range(totals.shape[0]):
        if not ready[c]:
            continue
        for k in range(offsets.size - 1):
            g0, g1 = offsets[k], offsets[k + 1]
            m = 0
            for g in range(g0, g1):
                s = 0
                for t in range(g_start[g], g_end[g]):
                    s += totals[c, t]
                counts[g] = float(s)
                m += s
            if m <= 0:
                continue
            mf = float(m)
            sm = smooth[k]
            denom = mf + sm * (g1 - g0)
            value = 0.0
            for g in range(g0, g1):
                w = (counts[g] + sm) / denom
                value += (w - b[g]) * math.log(w / b[g])
            n = n_base[k]
            n_eff = n * mf / (n + mf)
            out[c, k] = value >= max(psi_min[k], crit[k] / n_eff) * slack


def psi_screens(
    totals: npt.NDArray[np.int32] | IntArray,
    g_start: IntArray,
    g_end: IntArray,
    offsets: IntArray,
    smooth: FloatArray,
    b: FloatArray,
    n_base: FloatArray,
    psi_min: FloatArray,
    crit: FloatArray,
    ready: npt.NDArray[np.bool_],
    slack: float,
) -> npt.NDArray[np.bool_]:
    """``(C, K)`` bool: PSI item ``k`` may drift on window ``c`` (row of ``totals``).

    Item ``k``'s coarse groups are ``offsets[k] .. offsets[k + 1]``; group ``g`` sums
    the columns ``g_start[g] .. g_end[g]`` of a row. ``smooth`` (per item) is the
    smoothing, ``b`` (per group) the smoothed baseline shares, ``n_base`` the baseline
    size, ``psi_min`` and ``crit`` (the chi-square critical value) give the threshold
    ``max(psi_min, crit / n_eff)``; it is multiplied by ``slack`` (a little below 1).
    Windows with ``ready`` False, or empty, are not flagged."""
    out = np.zeros((totals.shape[0], offsets.size - 1), dtype=np.bool_)
    _psi(
        np.ascontiguousarray(totals),
        g_start,
        g_end,
        offsets,
        smooth,
        b,
        n_base,
        psi_min,
        crit,
        np.ascontiguousarray(ready),
        float(slack),
        np.empty(b.size, dtype=np.float64),
        out,
    )
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def _quality(
    totals: IntArray,
    index: IntArray,
    base: FloatArray,
    z_min: FloatArray,
    rise_min: FloatArray,
    ready: npt.NDArray[np.bool_],
    slack: float,
    absolute: float,
    out: npt.NDArray[np.bool_],
) -> None:  # pragma: no cover - compiled
    kinds = index.shape[1]
    for c in range(totals.shape[0]):
        if not ready[c]:
            continue
        for k in range(index.shape[0]):
            m = 0.0
            n = 0.0
            for q in range(kinds):
                m += float(totals[c, index[k, q]])
                n += base[k, q]
            if m <= 0 or n <= 0:
                continue
            for q in range(1, kinds):  # kind 0 ("ok") is not a problem
                x = float(totals[c, index[k, q]])
                rise = x / m - base[k, q] / n
                if rise >= rise_min[k] * slack - absolute and (
                    rate_z(x, m, base[k, q], n) >= z_min[k] * slack
                ):
                    out[c, k] = True
                    break


def quality_screens(
    totals: npt.NDArray[np.int32] | IntArray,
    index: IntArray,
    base: FloatArray,
    z_min: FloatArray,
    rise_min: FloatArray,
    ready: npt.NDArray[np.bool_],
    slack: float,
    absolute: float,
) -> npt.NDArray[np.bool_]:
    """``(C, K)`` bool: data-quality item ``k`` may drift on window ``c``.

    Item ``k``'s outcome counts (ok first, then the problem kinds) are the columns
    ``index[k]`` of a row; ``base[k]`` the baseline's counts. A problem kind flags when
    its rate rose by at least ``rise_min[k] * slack - absolute`` over the baseline's and
    its two-proportion z is at least ``z_min[k] * slack``. Windows with ``ready`` False,
    empty ones, and items with an empty baseline are not flagged."""
    out = np.zeros((totals.shape[0], index.shape[0]), dtype=np.bool_)
    _quality(
        np.ascontiguousarray(totals),
        np.ascontiguousarray(index, dtype=np.int64),
        np.ascontiguousarray(base, dtype=np.float64),
        z_min,
        rise_min,
        np.ascontiguousarray(ready),
        float(slack),
        float(absolute),
        out,
    )
    return out
