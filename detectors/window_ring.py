"""One count window for many binned detectors: a ring of sub-windows x all their bins.

A partition's binned detectors that share a count window (the same ``R`` sub-windows
of ``S`` events) keep their bins side by side in one flat row of ``T`` bins: each
detector input (a field's fine bins, a field's data-quality outcomes) is a *segment*
``[starts[s], starts[s + 1])`` of that row. The ring is ``R`` such rows, so

* a partition's share of a batch folds in with one compiled pass over its events
  for every segment at once (``fold``);
* the window total of every segment is one row ``total`` (shape ``(T,)``), and the
  windows of several partitions add by adding rows;
* sub-windows count the partition's *events* (every event, whatever its fields hold):
  a field's window holds its valid values among the window's events, and all
  segments close their sub-windows together, so one span (offsets, event times) per
  slot locates every field's window.

``fold`` also adds, at each given batch position (the stream's step boundaries), the
window total as it stood there into a ``(C, T)`` matrix: summed over the partitions
that is the stream's window at every step boundary, which is how verdicts are taken
at every step however large the batch.

>>> import numpy as np
>>> ring = WindowRing(np.array([0, 3, 5]), ring_size=2, step=2)   # 2 segments, 5 bins
>>> flat = np.array([[0, 1, 0, 2, 1], [3, 3, 4, 4, 3]])   # bins of 5 events
>>> totals, closed = np.zeros((2, 5), np.int64), np.zeros(2, np.int64)
>>> where = ring.fold(flat, np.arange(5), np.arange(5), None, np.array([3, 5]), totals, closed)
>>> totals.tolist(), closed.tolist()   # after 3 events one sub-window had closed
([[1, 1, 0, 2, 0], [2, 1, 1, 2, 2]], [1, 2])
>>> where.span_at(1, 0), ring.open_n
((4, 0, 3, None, None), 1)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

from detectors.base import DetectorError, FloatArray, IntArray

__all__ = ["CutSpans", "FlatBins", "WindowRing", "ks_many"]

# A batch's flat bins, one row per segment: 16-bit when the row width fits, else 32.
FlatBins = npt.NDArray[np.uint16] | npt.NDArray[np.int32]


@dataclasses.dataclass(frozen=True, slots=True)
class CutSpans:
    """Where one partition's window lay at each step boundary of a batch.

    ``events`` (shape ``(C, nseg)``): per boundary and segment, the counts in the
    window; ``spans`` (``(C, 4)``): first and last offset (-1: unknown), earliest and
    latest event time (NaN: unknown) of the window's events.
    """

    events: IntArray
    spans: FloatArray

    def span_at(
        self, c: int, segment: int
    ) -> tuple[int, int | None, int | None, float | None, float | None]:
        """``(events, first offset, last offset, start time, end time)`` of segment
        ``segment``'s window at boundary ``c``."""
        return _span_tuple(int(self.events[c, segment]), self.spans[c])


def _span_tuple(
    events: int, span: FloatArray
) -> tuple[int, int | None, int | None, float | None, float | None]:
    first, last, start, end = span.tolist()
    return (
        events,
        None if first < 0 else int(first),
        None if last < 0 else int(last),
        None if math.isnan(start) else start,
        None if math.isnan(end) else end,
    )


@njit(cache=True, nogil=True)
def _fold(
    flat: npt.NDArray[Any],  # uint16 or int32
    positions: IntArray,
    offsets: IntArray,
    has_offsets: bool,
    times: FloatArray,
    has_times: bool,
    ring: npt.NDArray[Any],  # uint16 or int32
    total: npt.NDArray[np.int32],
    open_: npt.NDArray[Any],
    segment_counts: IntArray,
    open_segments: IntArray,
    off: IntArray,
    tspan: FloatArray,
    scalars: IntArray,
    step: int,
    cuts: IntArray,
    out_totals: npt.NDArray[Any],  # int32 or int64
    out_closed: IntArray,
    cut_events: IntArray,
    cut_spans: FloatArray,
    constant: IntArray,
) -> None:  # pragma: no cover - compiled
    R, T = ring.shape
    nseg = flat.shape[0]
    open_n, pos, closed = scalars[0], scalars[1], scalars[2]
    C = cuts.size
    m = positions.size
    ci = 0
    j = 0
    while True:
        r = positions[j] if j < m else np.iinfo(np.int64).max
        while ci < C and cuts[ci] <= r:  # the state after the first cuts[ci] batch rows
            for t in range(T):
                out_totals[ci, t] += total[t]
            if closed > out_closed[ci]:
                out_closed[ci] = closed
            first, last = -1, -1
            lo, hi = np.nan, np.nan
            for k in range(R):
                for s in range(nseg):
                    cut_events[ci, s] += segment_counts[k, s]
                if off[k, 0] >= 0:
                    if first < 0 or off[k, 0] < first:
                        first = off[k, 0]
                    if off[k, 1] > last:
                        last = off[k, 1]
                if not np.isnan(tspan[k, 0]):
                    if np.isnan(lo) or tspan[k, 0] < lo:
                        lo = tspan[k, 0]
                    if np.isnan(hi) or tspan[k, 1] > hi:
                        hi = tspan[k, 1]
            cut_spans[ci, 0] = first
            cut_spans[ci, 1] = last
            cut_spans[ci, 2] = lo
            cut_spans[ci, 3] = hi
            ci += 1
        if j == m:
            break
        # The events up to the filling sub-window's close or the next boundary,
        # whichever comes first, are counted segment by segment (each segment's
        # bins are a few kB: the scattered increments stay in the L1 cache).
        e = min(m, j + (step - open_n))
        if ci < C:
            e = min(e, j + np.searchsorted(positions[j:e], cuts[ci]))
        if e <= j:  # (a restored sub-window fuller than step: one event at a time)
            e = j + 1
        for s in range(nseg):
            if constant[s] >= 0:  # every event counts in one bin (see fold)
                open_[constant[s]] += e - j
                open_segments[s] += e - j
                continue
            # Runs of one bin (a data-quality segment is mostly "ok") add up in a
            # register instead of one dependent increment of the same cell per event.
            row = flat[s]
            counted = 0
            prev = row[j]
            run = 0
            for jj in range(j, e):
                b = row[jj]
                if b != prev:
                    if prev < T:
                        open_[prev] += run
                        counted += run
                    prev = b
                    run = 0
                run += 1
            if prev < T:
                open_[prev] += run
                counted += run
            open_segments[s] += counted
        for jj in range(j, e):
            r = positions[jj]
            if has_offsets:
                if off[R, 0] < 0:
                    off[R, 0] = offsets[r]
                off[R, 1] = offsets[r]
            if has_times:
                x = times[r]
                if not np.isnan(x):
                    if np.isnan(tspan[R, 0]) or x < tspan[R, 0]:
                        tspan[R, 0] = x
                    if np.isnan(tspan[R, 1]) or x > tspan[R, 1]:
                        tspan[R, 1] = x
        open_n += e - j
        j = e
        if open_n == step:  # the filling sub-window closes: it replaces the oldest
            for t in range(T):
                v = open_[t]
                total[t] += np.int32(v) - np.int32(ring[pos, t])
                ring[pos, t] = v
                open_[t] = 0
            for s in range(nseg):
                segment_counts[pos, s] = open_segments[s]
                open_segments[s] = 0
            off[pos, 0] = off[R, 0]
            off[pos, 1] = off[R, 1]
            off[R, 0] = -1
            off[R, 1] = -1
            tspan[pos, 0] = tspan[R, 0]
            tspan[pos, 1] = tspan[R, 1]
            tspan[R, 0] = np.nan
            tspan[R, 1] = np.nan
            pos = (pos + 1) % R
            closed += 1
            open_n = 0
    scalars[0], scalars[1], scalars[2] = open_n, pos, closed


class WindowRing:
    """One partition's count window over segments of a flat bin row.

    ``starts``: int64, shape ``(nseg + 1,)``, ascending, ``starts[0] = 0``, the last
    is the row width ``T``. ``ring_size`` (``R``) sub-windows of ``step`` (``S``)
    events of the partition each.
    """

    def __init__(self, starts: IntArray, ring_size: int, step: int) -> None:
        if ring_size < 1 or step < 1:
            raise DetectorError(f"need ring_size >= 1 and step >= 1, got {ring_size}, {step}")
        self.starts = np.asarray(starts, dtype=np.int64)
        self.width = int(self.starts[-1])
        self.ring_size = int(ring_size)
        self.step = int(step)
        self._reset()

    def _reset(self) -> None:
        R, T, nseg = self.ring_size, self.width, self.starts.size - 1
        # A sub-window's counts are at most step: 16 bits when that fits (half the
        # memory a close walks through); state() gives them as int32.
        self._narrow = np.uint16 if self.step <= np.iinfo(np.uint16).max else np.int32
        self.ring: npt.NDArray[Any] = np.zeros((R, T), dtype=self._narrow)
        self.segment_counts = np.zeros((R, nseg), dtype=np.int64)
        # Counts of a window's bins fit 32 bits (half the memory a sub-window's
        # close and a boundary walk through); state() gives them as int64.
        self.total = np.zeros(T, dtype=np.int32)
        self.open: npt.NDArray[Any] = np.zeros(T, dtype=self._narrow)
        self.open_segments = np.zeros(nseg, dtype=np.int64)
        # open_n (events in the filling sub-window), pos (next slot to overwrite, the
        # oldest), closed (sub-windows closed so far).
        self._scalars = np.zeros(3, dtype=np.int64)
        # Per slot [first offset, last offset] (-1: unknown) and [earliest, latest]
        # event time (NaN: unknown); row R is the filling sub-window.
        self.off = np.full((R + 1, 2), -1, dtype=np.int64)
        self.tspan = np.full((R + 1, 2), np.nan, dtype=np.float64)
        self._spans: CutSpans | None = None  # spans() until the window moves

    @property
    def open_n(self) -> int:
        return int(self._scalars[0])

    @property
    def pos(self) -> int:
        return int(self._scalars[1])

    @property
    def closed(self) -> int:
        return int(self._scalars[2])

    @property
    def ready(self) -> bool:
        return self.closed >= self.ring_size

    def fold(
        self,
        flat: FlatBins,
        positions: IntArray,
        offsets: IntArray | None,
        times: FloatArray | None,
        cuts: IntArray,
        out_totals: npt.NDArray[np.int32] | IntArray,
        out_closed: IntArray,
        constant: IntArray | None = None,
    ) -> CutSpans:
        """Fold in this partition's events of a batch.

        ``flat`` (``(nseg, m)``): each of these events' flat bin per segment (``T`` or
        more: not counted); ``positions``: their rows in the batch, ascending;
        ``offsets`` / ``times`` (optional, the whole batch): Kafka offsets and event
        times. At each batch position in ``cuts`` (ascending) the window total as it
        stood there is added to ``out_totals`` (``(C, T)``) and ``out_closed`` (``(C,)``)
        is raised to the sub-windows closed there; returns where the window lay.
        ``constant`` (optional, ``(nseg,)``): where ``>= 0``, the flat bin every event
        has in that segment (its row of ``flat`` is not read).
        """
        self._spans = None
        C, nseg = int(cuts.size), self.starts.size - 1
        events = np.zeros((C, nseg), dtype=np.int64)
        spans = np.empty((C, 4), dtype=np.float64)
        _fold(
            flat,
            np.ascontiguousarray(positions, dtype=np.int64),
            _NO_OFFSETS if offsets is None else offsets,
            offsets is not None,
            _NO_TIMES if times is None else times,
            times is not None,
            self.ring,
            self.total,
            self.open,
            self.segment_counts,
            self.open_segments,
            self.off,
            self.tspan,
            self._scalars,
            self.step,
            cuts,
            out_totals,
            out_closed,
            events,
            spans,
            _no_constants(nseg) if constant is None else constant,
        )
        return CutSpans(events, spans)

    def spans(self) -> CutSpans:
        """Where the window lies now, every segment at once (one boundary); kept
        (read-only) until the window moves: a batch's evidence reads every window it
        does not move."""
        if self._spans is None:
            self._spans = self._spans_now()
        return self._spans

    def _spans_now(self) -> CutSpans:
        R = self.ring_size
        off, ts = self.off[:R], self.tspan[:R]
        known = off[:, 0] >= 0
        tk = ~np.isnan(ts[:, 0])
        span = np.array(
            [
                off[known, 0].min() if known.any() else -1,
                off[known, 1].max() if known.any() else -1,
                ts[tk, 0].min() if tk.any() else np.nan,
                ts[tk, 1].max() if tk.any() else np.nan,
            ],
            dtype=np.float64,
        )
        events = self.segment_counts.sum(axis=0)[None, :]
        events.flags.writeable = False
        span.flags.writeable = False
        return CutSpans(events, span[None, :])

    def span(self, segment: int) -> tuple[int, int | None, int | None, float | None, float | None]:
        """Where segment ``segment``'s window lies now: ``(events, first offset, last
        offset, start time, end time)``."""
        R = self.ring_size
        off, ts = self.off[:R], self.tspan[:R]
        known = off[:, 0] >= 0
        tk = ~np.isnan(ts[:, 0])
        span = np.array(
            [
                off[known, 0].min() if known.any() else -1,
                off[known, 1].max() if known.any() else -1,
                ts[tk, 0].min() if tk.any() else np.nan,
                ts[tk, 1].max() if tk.any() else np.nan,
            ],
            dtype=np.float64,
        )
        return _span_tuple(int(self.segment_counts[:, segment].sum()), span)

    # ------------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        """Plain values and numpy arrays; ``restore`` continues exactly."""
        return {
            "starts": self.starts.copy(),
            "step": self.step,
            "ring": self.ring.astype(np.int32),
            "segment_counts": self.segment_counts.copy(),
            "total": self.total.astype(np.int64),
            "open": self.open.astype(np.int64),
            "open_segments": self.open_segments.copy(),
            "open_n": self.open_n,
            "pos": self.pos,
            "closed": self.closed,
            "off": self.off.copy(),
            "tspan": self.tspan.copy(),
        }

    def _fit(self, counts: npt.NDArray[np.int32]) -> npt.NDArray[Any]:
        """Sub-window counts in the ring's narrow type if they fit (a restored state
        can hold anything), else as int32."""
        info = np.iinfo(self._narrow)
        if counts.size and (counts.min() < info.min or counts.max() > info.max):
            return counts.copy()
        return counts.astype(self._narrow)

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state()`` of a ring built with the same arguments."""
        starts = np.asarray(state["starts"], dtype=np.int64)
        ring = np.asarray(state["ring"], dtype=np.int32)
        if not np.array_equal(starts, self.starts) or ring.shape != self.ring.shape:
            raise DetectorError("window state has another layout of bins (other detectors)")
        if int(state["step"]) != self.step:
            raise DetectorError(
                f"window state has sub-windows of {state['step']}, this window needs {self.step}"
            )
        self.ring = self._fit(ring)
        self.segment_counts = np.asarray(state["segment_counts"], dtype=np.int64).copy()
        self.total = np.asarray(state["total"], dtype=np.int32).copy()
        self.open = self._fit(np.asarray(state["open"], dtype=np.int32))
        self.open_segments = np.asarray(state["open_segments"], dtype=np.int64).copy()
        self._scalars = np.array(
            [int(state["open_n"]), int(state["pos"]), int(state["closed"])], dtype=np.int64
        )
        self.off = np.asarray(state["off"], dtype=np.int64).reshape(-1, 2).copy()
        self.tspan = np.asarray(state["tspan"], dtype=np.float64).reshape(-1, 2).copy()
        self._spans = None


def _no_constants(nseg: int) -> IntArray:
    return np.full(nseg, -1, dtype=np.int64)


_NO_OFFSETS = np.empty(0, dtype=np.int64)
_NO_TIMES = np.empty(0, dtype=np.float64)


@njit(cache=True, nogil=True)
def _ks_many(
    totals: IntArray,
    starts: IntArray,
    cdf: FloatArray,
    cdf_starts: IntArray,
    d_out: FloatArray,
    m_out: FloatArray,
    exact: bool,
) -> None:  # pragma: no cover - compiled
    C = totals.shape[0]
    F = starts.size
    for c in range(C):
        for f in range(F):
            a = starts[f]
            b0 = cdf_starts[f]
            inner = cdf_starts[f + 1] - b0
            # Counts add up in integers (exact, and no floating-point add in the loop's
            # dependency chain); as floats they are the same values.
            mi = 0
            for i in range(inner + 1):
                mi += totals[c, a + i]
            m = float(mi)
            m_out[c, f] = m
            if m <= 0:
                d_out[c, f] = 0.0
                continue
            run = 0
            best = 0.0
            if exact:
                for i in range(inner):
                    run += totals[c, a + i]
                    d = abs(float(run) / m - cdf[b0 + i])
                    if d > best:
                        best = d
            else:  # a multiplication instead of a division: within 1e-15 of D
                inv = 1.0 / m
                for i in range(inner):
                    run += totals[c, a + i]
                    d = abs(float(run) * inv - cdf[b0 + i])
                    if d > best:
                        best = d
            d_out[c, f] = best


def ks_many(
    totals: npt.NDArray[np.int32] | IntArray,
    starts: IntArray,
    cdf: FloatArray,
    cdf_starts: IntArray,
    *,
    exact: bool = True,
) -> tuple[FloatArray, FloatArray]:
    """Binned KS ``D`` (``ks.ks_from_counts``) and window size of many fields at many
    positions: field ``f``'s ``B_f`` bins are ``totals[:, starts[f] : starts[f] + B_f]``
    and its baseline CDF at the inner edges ``cdf[cdf_starts[f] : cdf_starts[f + 1]]``
    (``B_f - 1`` values). Returns ``(D, m)``, each shape ``(C, F)``. ``exact=False``
    (for screens): ``D`` within a few ulp (it multiplies by ``1 / m``), faster."""
    C, F = totals.shape[0], starts.size
    d = np.zeros((C, F), dtype=np.float64)
    m = np.zeros((C, F), dtype=np.float64)
    counts = totals if totals.dtype in (np.int32, np.int64) else totals.astype(np.int64)
    _ks_many(
        np.ascontiguousarray(counts),
        np.ascontiguousarray(starts, dtype=np.int64),
        np.ascontiguousarray(cdf, dtype=np.float64),
        np.ascontiguousarray(cdf_starts, dtype=np.int64),
        d,
        m,
        exact,
    )
    return d, m
