"""One count window for many binned detectors: a ring of sub-windows x all their bins.

A partition's binned detectors that share a count window (the same ``R`` sub-windows
of ``S`` events) keep their bins side by side in one flat row of ``T`` bins: each
detector input (a field's fine bins, a field's data-quality outcomes) is a *segment*
``[starts[s], starts[s + 1])`` of that row. The ring is ``R`` such rows, so

* a batch folds in with one ``np.bincount`` over (sub-window, flat bin) pairs for
  every segment at once (``WindowRing.subwindows`` tells each event's sub-window);
* the window total of every segment is one row ``total`` (shape ``(T,)``), and the
  windows of several partitions add by adding rows;
* sub-windows count the partition's *events* (every event, whatever its fields hold):
  a field's window holds its valid values among the window's events, and all
  segments close their sub-windows together, so one span (offsets, event times) per
  slot locates every field's window.

``fold`` returns what the batch closed (``Pushes``): for each closed sub-window its
end position in the batch, the change of the window total it made (``deltas``: the
new sub-window minus the one it evicted), and the slots' spans. Adding the deltas of
all partitions in end order gives the stream's window at any position inside the
batch (``stream_totals``), which is how verdicts are taken at every step.

>>> import numpy as np
>>> ring = WindowRing(np.array([0, 3, 5]), ring_size=2, step=2)   # 2 segments, 5 bins
>>> k = ring.subwindows(5)            # 5 events: sub-windows 0, 0, 1, 1, 2
>>> k.tolist()
[0, 0, 1, 1, 2]
>>> flat = np.array([[0, 3], [1, 3], [0, 4], [2, 4], [1, 3]])   # bins per event
>>> counts = np.zeros((3, 5), np.int64)
>>> np.add.at(counts, (np.repeat(k, 2), flat.ravel()), 1)
>>> pushes = ring.fold(counts, np.arange(5), np.arange(5), None)
>>> pushes.ends.tolist(), ring.closed, ring.total.tolist(), ring.open_n
([2, 4], 2, [2, 1, 1, 2, 2], 1)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

from detectors.base import DetectorError, FloatArray, IntArray

__all__ = ["Pushes", "WindowRing", "ks_many", "stream_totals"]


@dataclasses.dataclass(frozen=True, slots=True)
class Pushes:
    """The sub-windows one partition's share of a batch closed, in batch order.

    ``ends`` (shape ``(k,)``): batch position just past the event that closed each;
    ``deltas`` (``(k, T)``): change of the window total each made; ``closed``
    (``(k,)``): sub-windows closed after each. ``spans`` (``(R + k, 4)``) and
    ``segments`` (``(R + k, nseg)``): first and last offset, earliest and latest event
    time, and per segment the count, of the ring's slots oldest first (as before the
    batch) followed by the closed ones; the window after ``i`` of them (``i = 0``: as
    before the batch) is rows ``i .. i + R - 1``.
    """

    ends: IntArray
    deltas: IntArray
    closed: IntArray
    spans: FloatArray
    segments: IntArray
    closed0: int
    ring_size: int

    def index_at(self, cut: int) -> int:
        """How many of these sub-windows had closed at batch position ``cut``."""
        return int(np.searchsorted(self.ends, cut, side="right"))

    def span_at(
        self, i: int, segment: int
    ) -> tuple[int, int | None, int | None, float | None, float | None]:
        """``(events, first offset, last offset, start time, end time)`` of segment
        ``segment``'s window after ``i`` of these sub-windows closed."""
        rows = self.spans[i : i + self.ring_size]
        events = int(self.segments[i : i + self.ring_size, segment].sum())
        known = rows[:, 0] >= 0
        tk = ~np.isnan(rows[:, 2])
        return (
            events,
            int(rows[known, 0].min()) if known.any() else None,
            int(rows[known, 1].max()) if known.any() else None,
            float(rows[tk, 2].min()) if tk.any() else None,
            float(rows[tk, 3].max()) if tk.any() else None,
        )


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
        self.ring = np.zeros((R, T), dtype=np.int32)
        self.segment_counts = np.zeros((R, nseg), dtype=np.int64)
        self.total = np.zeros(T, dtype=np.int64)
        self.open = np.zeros(T, dtype=np.int64)
        self.open_n = 0
        self.pos = 0  # next slot to overwrite (the oldest)
        self.closed = 0
        # Per slot [first offset, last offset] (-1: unknown) and [earliest, latest]
        # event time (NaN: unknown); row R is the filling sub-window.
        self.off = np.full((R + 1, 2), -1, dtype=np.int64)
        self.tspan = np.full((R + 1, 2), np.nan, dtype=np.float64)

    @property
    def ready(self) -> bool:
        return self.closed >= self.ring_size

    def subwindows(self, m: int) -> IntArray:
        """Sub-window of each of the next ``m`` events: 0 is the filling one."""
        return (self.open_n + np.arange(m, dtype=np.int64)) // self.step

    def closes(self, m: int) -> int:
        """Sub-windows the next ``m`` events close."""
        return (self.open_n + m) // self.step

    def fold(
        self,
        counts: IntArray,
        positions: IntArray,
        offsets: IntArray | None,
        times: FloatArray | None,
    ) -> Pushes:
        """Fold in ``m`` events: ``counts`` (``(closes(m) + 1, T)``) are their flat bin
        counts per sub-window (as ``subwindows(m)`` numbered them), ``positions`` their
        positions in the batch (ascending), ``offsets`` / ``times`` (optional) their
        Kafka offsets and event times."""
        R, S = self.ring_size, self.step
        m = int(positions.size)
        kk = self.closes(m)
        open0 = self.open_n
        aged = (self.pos + np.arange(R)) % R  # slots, oldest first
        old_spans = np.concatenate([self.off[aged].astype(np.float64), self.tspan[aged]], axis=1)
        old_segments = self.segment_counts[aged]
        if kk == 0:
            self.open += counts[0]
            self._widen_open(offsets, times, 0, m)
            self.open_n += m
            return Pushes(
                np.empty(0, np.int64),
                np.empty((0, self.width), np.int64),
                np.empty(0, np.int64),
                old_spans,
                old_segments,
                self.closed,
                R,
            )
        pushed = counts[:kk].astype(np.int64, copy=True)
        pushed[0] += self.open
        seq = np.concatenate([self.ring[aged].astype(np.int64), pushed])
        deltas = seq[R:] - seq[:kk]
        segments = np.add.reduceat(pushed, self.starts[:-1], axis=1)
        # Spans of the closed sub-windows: events [j S - open0, (j + 1) S - open0) of
        # this share (the first one began before the batch when open0 > 0).
        lo = np.maximum(np.arange(kk, dtype=np.int64) * S - open0, 0)
        hi = np.arange(1, kk + 1, dtype=np.int64) * S - open0  # exclusive
        spans = np.full((kk, 4), np.nan)
        if offsets is not None:
            spans[:, 0], spans[:, 1] = offsets[lo], offsets[hi - 1]
        else:
            spans[:, :2] = -1
        if times is not None:
            spans[:, 2] = np.minimum.reduceat(times[: hi[-1]], lo)
            spans[:, 3] = np.maximum.reduceat(times[: hi[-1]], lo)
        if open0 > 0:  # the first closed sub-window began in an earlier batch
            if self.off[R, 0] >= 0:
                spans[0, 0] = self.off[R, 0]
            if not np.isnan(self.tspan[R, 0]):
                spans[0, 2] = np.fmin(self.tspan[R, 0], spans[0, 2])
                spans[0, 3] = np.fmax(self.tspan[R, 1], spans[0, 3])
        keep = min(kk, R)  # later sub-windows of a long batch overwrite earlier ones
        where = (self.pos + np.arange(kk - keep, kk)) % R
        self.ring[where] = pushed[kk - keep :]
        self.segment_counts[where] = segments[kk - keep :]
        self.off[where] = spans[kk - keep :, :2].astype(np.int64)
        self.tspan[where] = spans[kk - keep :, 2:]
        self.total += deltas.sum(axis=0)
        self.pos = (self.pos + kk) % R
        closed0 = self.closed
        self.closed += kk
        self.open = counts[kk].astype(np.int64, copy=True)
        tail = int(hi[-1])
        self.open_n = m - tail
        self.off[R], self.tspan[R] = -1, np.nan
        self._widen_open(offsets, times, tail, m)
        return Pushes(
            positions[hi - 1] + 1,
            deltas,
            closed0 + np.arange(1, kk + 1, dtype=np.int64),
            np.concatenate([old_spans, spans]),
            np.concatenate([old_segments, segments]),
            closed0,
            R,
        )

    def _widen_open(
        self, offsets: IntArray | None, times: FloatArray | None, a: int, b: int
    ) -> None:
        """Widen the filling sub-window's span by this share's events ``a:b``."""
        if b <= a:
            return
        R = self.ring_size
        if offsets is not None:
            if self.off[R, 0] < 0:
                self.off[R, 0] = offsets[a]
            self.off[R, 1] = offsets[b - 1]
        if times is not None:
            seg = times[a:b]
            self.tspan[R, 0] = np.fmin(self.tspan[R, 0], seg.min())
            self.tspan[R, 1] = np.fmax(self.tspan[R, 1], seg.max())

    def span(self, segment: int) -> tuple[int, int | None, int | None, float | None, float | None]:
        """``Pushes.span_at`` of the window as it is now."""
        R = self.ring_size
        aged = (self.pos + np.arange(R)) % R
        spans = np.concatenate([self.off[aged].astype(np.float64), self.tspan[aged]], axis=1)
        now = Pushes(
            np.empty(0, np.int64),
            np.empty((0, self.width), np.int64),
            np.empty(0, np.int64),
            spans,
            self.segment_counts[aged],
            self.closed,
            R,
        )
        return now.span_at(0, segment)

    # ------------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        """Plain values and numpy arrays; ``restore`` continues exactly."""
        return {
            "starts": self.starts.copy(),
            "step": self.step,
            "ring": self.ring.copy(),
            "segment_counts": self.segment_counts.copy(),
            "total": self.total.copy(),
            "open": self.open.copy(),
            "open_n": self.open_n,
            "pos": self.pos,
            "closed": self.closed,
            "off": self.off.copy(),
            "tspan": self.tspan.copy(),
        }

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
        self.ring = ring.copy()
        self.segment_counts = np.asarray(state["segment_counts"], dtype=np.int64).copy()
        self.total = np.asarray(state["total"], dtype=np.int64).copy()
        self.open = np.asarray(state["open"], dtype=np.int64).copy()
        self.open_n = int(state["open_n"])
        self.pos = int(state["pos"])
        self.closed = int(state["closed"])
        self.off = np.asarray(state["off"], dtype=np.int64).reshape(-1, 2).copy()
        self.tspan = np.asarray(state["tspan"], dtype=np.float64).reshape(-1, 2).copy()


def stream_totals(
    base: IntArray, pushes: list[Pushes], cuts: IntArray
) -> tuple[IntArray, IntArray]:
    """The stream's window total at each batch position in ``cuts`` (``(C, T)``), and
    the most sub-windows any partition had closed there (``(C,)``).

    ``base`` (``(T,)``): the sum of every partition's window total before the batch
    (partitions the batch did not touch included); ``pushes``: what the batch closed
    in each partition it touched.
    """
    C = int(cuts.size)
    closed = np.zeros(C, dtype=np.int64)
    for p in pushes:
        n_at = np.searchsorted(p.ends, cuts, side="right")
        closed = np.maximum(closed, p.closed0 + n_at)
    moved = [p for p in pushes if p.ends.size]
    if not moved:
        return np.repeat(base[None, :], C, axis=0), closed
    ends = np.concatenate([p.ends for p in moved])
    order = np.argsort(ends, kind="stable")
    deltas = np.concatenate([p.deltas for p in moved])[order]
    csum = np.empty((deltas.shape[0] + 1, deltas.shape[1]), dtype=np.int64)
    csum[0] = base
    np.cumsum(deltas, axis=0, out=csum[1:])
    csum[1:] += base
    return csum[np.searchsorted(ends[order], cuts, side="right")], closed


@njit(cache=True, nogil=True)
def _ks_many(
    totals: IntArray,
    starts: IntArray,
    cdf: FloatArray,
    cdf_starts: IntArray,
    d_out: FloatArray,
    m_out: FloatArray,
) -> None:  # pragma: no cover - compiled
    C = totals.shape[0]
    F = starts.size
    for c in range(C):
        for f in range(F):
            a = starts[f]
            b0 = cdf_starts[f]
            inner = cdf_starts[f + 1] - b0
            m = 0.0
            for i in range(inner + 1):
                m += totals[c, a + i]
            m_out[c, f] = m
            if m <= 0:
                d_out[c, f] = 0.0
                continue
            run = 0.0
            best = 0.0
            for i in range(inner):
                run += totals[c, a + i]
                d = abs(run / m - cdf[b0 + i])
                if d > best:
                    best = d
            d_out[c, f] = best


def ks_many(
    totals: IntArray, starts: IntArray, cdf: FloatArray, cdf_starts: IntArray
) -> tuple[FloatArray, FloatArray]:
    """Binned KS ``D`` (``ks.ks_from_counts``) and window size of many fields at many
    positions: field ``f``'s ``B_f`` bins are ``totals[:, starts[f] : starts[f] + B_f]``
    and its baseline CDF at the inner edges ``cdf[cdf_starts[f] : cdf_starts[f + 1]]``
    (``B_f - 1`` values). Returns ``(D, m)``, each shape ``(C, F)``."""
    C, F = totals.shape[0], starts.size
    d = np.zeros((C, F), dtype=np.float64)
    m = np.zeros((C, F), dtype=np.float64)
    _ks_many(
        np.ascontiguousarray(totals, dtype=np.int64),
        np.ascontiguousarray(starts, dtype=np.int64),
        np.ascontiguousarray(cdf, dtype=np.float64),
        np.ascontiguousarray(cdf_starts, dtype=np.int64),
        d,
        m,
    )
    return d, m


_ = npt  # numpy.typing is used in annotations of callers
