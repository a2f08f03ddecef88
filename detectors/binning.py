"""Binning values against sorted edges, fast.

``np.searchsorted`` with unsorted keys costs ~70 ns per value here: every step of
its binary search is a data-dependent branch the CPU mispredicts half the time.
``EdgeIndex`` first looks the value up in a uniform grid over the edges' range
(one multiply), which narrows the answer to the few edges inside that grid cell,
then finishes with a short search in a compiled kernel. Quantile edges are dense
where the data is, so cells hold few edges where most values fall.

>>> import numpy as np
>>> index = EdgeIndex(np.array([0.0, 1.0, 2.0]))
>>> index.count_at_or_below(np.array([-1.0, 0.0, 0.5, 1.0, 5.0, np.nan])).tolist()
[0, 1, 1, 2, 3, 3]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

from detectors.base import FloatArray, IntArray

__all__ = ["EdgeIndex", "EdgeIndexes"]

_MAX_CANDIDATES = 12


@njit(cache=True, nogil=True)
def _lookup(
    edges: FloatArray,
    padded: FloatArray,
    k: int,
    lut: npt.NDArray[Any],  # int32 (or int64 past 2**31 edges)
    lo: float,
    hi: float,
    scale: float,
    values: FloatArray,
    out: IntArray,
) -> None:  # pragma: no cover - compiled
    n = edges.size
    cells = lut.size - 1
    for i in range(values.size):
        x = values[i]
        if not x >= lo:  # below the first edge, or NaN (which sorts after everything)
            out[i] = 0 if x < lo else n
            continue
        if x >= hi:
            out[i] = n
            continue
        c = int((x - lo) * scale)
        if c >= cells:
            c = cells - 1
        # Edges of earlier cells are < x, edges of later cells > x (the cell of an
        # edge is computed as here): only the cell's own edges need comparing.
        a = lut[c]
        if k > 0:  # count a fixed number of candidates: no data-dependent branch
            found = a
            for j in range(k):
                found += padded[a + j] <= x
            a = found
        else:
            b = lut[c + 1]
            while a < b:
                mid = (a + b) >> 1
                if edges[mid] <= x:
                    a = mid + 1
                else:
                    b = mid
        out[i] = a


@njit(cache=True, nogil=True)
def _lookup_into(
    edges: FloatArray,
    padded: FloatArray,
    k: int,
    lut: npt.NDArray[Any],  # int32 (or int64 past 2**31 edges)
    lo: float,
    hi: float,
    scale: float,
    values: FloatArray,
    valid: npt.NDArray[np.bool_],
    shift: int,
    missing: int,
    out: IntArray,
) -> None:  # pragma: no cover - compiled
    n = edges.size
    cells = lut.size - 1
    for i in range(values.size):
        if not valid[i]:
            out[i] = missing
            continue
        x = values[i]
        if not x >= lo:
            out[i] = (0 if x < lo else n) + shift
            continue
        if x >= hi:
            out[i] = n + shift
            continue
        c = int((x - lo) * scale)
        if c >= cells:
            c = cells - 1
        a = lut[c]
        if k > 0:  # count a fixed number of candidates: no data-dependent branch
            found = a
            for j in range(k):
                found += padded[a + j] <= x
            a = found
        else:
            b = lut[c + 1]
            while a < b:
                mid = (a + b) >> 1
                if edges[mid] <= x:
                    a = mid + 1
                else:
                    b = mid
        out[i] = a + shift


@njit(cache=True, nogil=True)
def _lookup_rows(
    values: npt.NDArray[np.float64],  # (rows, n)
    rows: IntArray,  # (F,) the row of values each index reads
    valid: npt.NDArray[np.bool_],  # (rows', n)
    valid_rows: IntArray,  # (F,) the row of valid (-1: every value is valid)
    positions: IntArray,  # (m,) the columns to read, in this order
    gather: bool,  # False: positions are 0..n-1
    edges: FloatArray,  # every index's edges end to end
    padded: FloatArray,
    luts: npt.NDArray[np.int32],
    e_at: IntArray,  # (F + 1,) where each index's edges start
    p_at: IntArray,
    l_at: IntArray,
    ks: IntArray,
    lo_: FloatArray,
    hi_: FloatArray,
    scale_: FloatArray,
    shifts: IntArray,
    missing: int,
    out: npt.NDArray[np.int32],  # (out rows, m)
    out_rows: IntArray,  # (F,) the row of out each index writes
    every: npt.NDArray[np.bool_],  # (n,) all True
    scratch: FloatArray,  # (m,)
    scratch_ok: npt.NDArray[np.bool_],  # (m,)
) -> None:  # pragma: no cover - compiled
    for f in range(rows.size):
        column = values[rows[f]]
        ok = every if valid_rows[f] < 0 else valid[valid_rows[f]]
        if gather:
            for i in range(positions.size):
                scratch[i] = column[positions[i]]
                scratch_ok[i] = ok[positions[i]]
            column, ok = scratch, scratch_ok
        _lookup_into(
            edges[e_at[f] : e_at[f + 1]],
            padded[p_at[f] : p_at[f + 1]],
            ks[f],
            luts[l_at[f] : l_at[f + 1]],
            lo_[f],
            hi_[f],
            scale_[f],
            column,
            ok,
            shifts[f],
            missing,
            out[out_rows[f]],
        )


class EdgeIndex:
    """A lookup structure over sorted ``edges`` (float64, shape ``(E,)``, no NaN)."""

    def __init__(self, edges: FloatArray, cells: int = 4096) -> None:
        e = np.ascontiguousarray(edges, dtype=np.float64)
        self.edges = e
        finite = e[np.isfinite(e)]
        self._lo = float(finite[0]) if finite.size else 0.0
        self._hi = float(finite[-1]) if finite.size else 0.0
        span = self._hi - self._lo
        scale = cells / span if span > 0 and np.isfinite(span) else 0.0
        # A span of a few subnormals overflows the scale: searchsorted answers then.
        self._scale = scale if np.isfinite(scale) else 0.0
        # lut[c]: how many edges fall in cells before c, each edge's cell computed with
        # the kernels' own operations, so an edge of an earlier cell is < any value of
        # cell c and an edge of a later cell is > it (the map is monotone), whatever
        # the rounding. (int32: half the cache a batch's lookups of many fields share)
        finite_all = finite.size == e.size and e.size > 0
        if self._scale and finite_all:
            at = np.minimum(((e - self._lo) * self._scale).astype(np.int64), cells - 1)
        else:
            at = np.zeros(e.size, dtype=np.int64)
        self._lut = np.searchsorted(at, np.arange(cells + 1), side="left").astype(
            np.int32 if e.size < 2**31 - 1 else np.int64
        )
        self._usable = finite_all and self._scale > 0
        # A value of cell c is compared with the cell's edges only. When no cell holds
        # more than _MAX_CANDIDATES edges, the kernels count k edges from lut[c] (edges
        # past the cell are > the value; +inf pads the end) instead of a binary search
        # that mispredicts half its steps.
        n = e.size
        widest = int(np.diff(self._lut).max()) if cells and n else 0
        self._k = widest if 0 < widest <= _MAX_CANDIDATES else 0
        self._padded = np.concatenate([e, np.full(max(self._k, 1), np.inf)])

    @property
    def usable(self) -> bool:
        """True when the grid lookup applies (finite edges, a positive span); else
        ``np.searchsorted`` answers."""
        return self._usable

    def count_at_or_below(self, values: FloatArray) -> IntArray:
        """For each value, how many edges are ``<= value`` (int64, shape ``(m,)``):
        ``np.searchsorted(edges, values, side="right")``."""
        v = np.ascontiguousarray(values, dtype=np.float64).ravel()
        if not self._usable:
            return np.searchsorted(self.edges, v, side="right").astype(np.int64)
        out = np.empty(v.size, dtype=np.int64)
        _lookup(
            self.edges, self._padded, self._k, self._lut, self._lo, self._hi, self._scale, v, out
        )
        return out

    def count_into(
        self,
        values: FloatArray,
        valid: npt.NDArray[np.bool_],
        out: IntArray,
        shift: int,
        missing: int,
    ) -> None:
        """``out[i] = count_at_or_below(values[i]) + shift`` where ``valid[i]``, else
        ``missing``; ``out`` may be a strided view (a column of a matrix)."""
        v = np.ascontiguousarray(values, dtype=np.float64)
        ok = np.ascontiguousarray(valid, dtype=np.bool_)
        if not self._usable:
            found = np.searchsorted(self.edges, np.where(ok, v, 0.0), side="right")
            out[:] = np.where(ok, found + shift, missing)
            return
        _lookup_into(
            self.edges,
            self._padded,
            self._k,
            self._lut,
            self._lo,
            self._hi,
            self._scale,
            v,
            ok,
            shift,
            missing,
            out,
        )


class EdgeIndexes:
    """Several ``EdgeIndex`` lookups done in one compiled call (one pass per index
    over a batch, no Python between them).

    >>> import numpy as np
    >>> both = EdgeIndexes([EdgeIndex(np.array([0.0, 1.0])), EdgeIndex(np.array([4.0, 6.0]))])
    >>> values = np.array([[0.5, 2.0, -1.0], [4.0, 5.0, 9.0]])
    >>> out = np.zeros((2, 3), dtype=np.int32)
    >>> both.count_into(values, np.array([0, 1]), None, np.array([-1, -1]), None,
    ...                 out, np.array([0, 1]), np.array([0, 10]), -1)
    >>> out.tolist()
    [[1, 2, 0], [11, 11, 12]]
    """

    def __init__(self, indexes: list[EdgeIndex]) -> None:
        if not all(ix.usable for ix in indexes):
            raise ValueError("every index must have finite edges and a positive span")

        def at(sizes: list[int]) -> IntArray:
            return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

        self._edges = np.concatenate([ix.edges for ix in indexes] or [np.empty(0)])
        self._padded = np.concatenate([ix._padded for ix in indexes] or [np.empty(0)])
        self._luts = np.concatenate([ix._lut.astype(np.int32) for ix in indexes] or [_NO_LUT])
        self._e_at = at([ix.edges.size for ix in indexes])
        self._p_at = at([ix._padded.size for ix in indexes])
        self._l_at = at([ix._lut.size for ix in indexes])
        self._ks = np.asarray([ix._k for ix in indexes], dtype=np.int64)
        self._lo = np.asarray([ix._lo for ix in indexes], dtype=np.float64)
        self._hi = np.asarray([ix._hi for ix in indexes], dtype=np.float64)
        self._scale = np.asarray([ix._scale for ix in indexes], dtype=np.float64)
        if self._edges.size >= 2**31 - 1:
            raise ValueError("too many edges for one call")
        self._every = np.ones(0, dtype=np.bool_)
        self._scratch = np.empty(0, dtype=np.float64)
        self._scratch_ok = np.empty(0, dtype=np.bool_)

    def count_into(
        self,
        values: npt.NDArray[np.float64],
        rows: IntArray,
        valid: npt.NDArray[np.bool_] | None,
        valid_rows: IntArray,
        positions: IntArray | None,
        out: npt.NDArray[np.int32],
        out_rows: IntArray,
        shifts: IntArray,
        missing: int,
    ) -> None:
        """For index ``f`` and each column ``positions[i]`` (every column when None):
        ``out[out_rows[f], i] = count_at_or_below(values[rows[f], positions[i]]) +
        shifts[f]``, or ``missing`` where ``valid[valid_rows[f], positions[i]]`` is
        False (``valid_rows[f] = -1``: every value is valid). ``values`` (``(r, n)``
        float64) and ``out`` (``(r', m)`` int32) are C-contiguous."""
        n = values.shape[1]
        m = n if positions is None else positions.size
        if self._every.size < n:
            self._every = np.ones(n, dtype=np.bool_)
        if self._scratch.size < m:
            self._scratch = np.empty(m, dtype=np.float64)
            self._scratch_ok = np.empty(m, dtype=np.bool_)
        _lookup_rows(
            values,
            rows,
            _NO_VALID if valid is None else valid,
            valid_rows,
            _NO_POSITIONS if positions is None else positions,
            positions is not None,
            self._edges,
            self._padded,
            self._luts,
            self._e_at,
            self._p_at,
            self._l_at,
            self._ks,
            self._lo,
            self._hi,
            self._scale,
            shifts,
            missing,
            out,
            out_rows,
            self._every[:n],
            self._scratch[:m],
            self._scratch_ok[:m],
        )


_NO_POSITIONS = np.zeros(0, dtype=np.int64)
_NO_LUT = np.zeros(0, dtype=np.int32)
_NO_VALID = np.ones((1, 1), dtype=np.bool_)
