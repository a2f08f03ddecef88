"""Sliding windows of bin counts, kept as a ring of sub-windows.

A window is ``R = window / step`` sub-windows of bin counts. A batch costs one
``np.bincount`` over (sub-window, bin) pairs, whatever the number of sub-window
boundaries it crosses; a running total keeps the window's counts, so evaluating a
window never re-reads events. Windows of two partitions add exactly (``merge``).

Two clocks:

* count-based (``window_events``, ``step_events``): a sub-window closes every
  ``step_events`` events; the window is the last ``R`` *closed* sub-windows, so a
  verdict always covers exactly ``window_events`` events.
* event-time (``window_seconds``, ``step_seconds``): sub-window ``k`` holds the
  events with ``k * step <= t < (k + 1) * step`` (seconds since the epoch); the
  window is the ``R`` sub-windows before the newest one. Events older than the
  window are dropped and counted (``late``); out-of-order events inside it count.

``WindowedDetector`` is the shared machinery of the binned drift detectors (KS,
PSI, ChiSquare): validation of window and false-alarm arguments, ``update``,
``evaluate``, ``state``/``restore``, ``merge``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from detectors.base import DetectorError, Finding, FloatArray, IntArray, WindowBounds
from detectors.baseline import CategoricalBaseline, NumericBaseline

__all__ = ["DEFAULT_ERT_EVENTS", "DEFAULT_ERT_SECONDS", "SlidingCounts", "WindowedDetector"]

#: Default expected events between false alarms, per detector, for count windows.
DEFAULT_ERT_EVENTS = 1e10
#: Default expected seconds between false alarms, per detector, for time windows.
DEFAULT_ERT_SECONDS = 3.15e8  # ten years


class SlidingCounts:
    """A sliding window of bin counts over ``bins`` bins.

    Give either ``window_events`` and ``step_events`` (count clock) or
    ``window_seconds`` and ``step_seconds`` (event-time clock); the window must be a
    whole number of steps. ``keep_values`` (count clock only) also keeps the raw
    values of the window, for exact statistics.
    """

    def __init__(
        self,
        bins: int,
        window_events: int | None = None,
        step_events: int | None = None,
        window_seconds: float | None = None,
        step_seconds: float | None = None,
        keep_values: bool = False,
    ) -> None:
        self.bins = bins
        self.window_events = window_events
        self.step_events = step_events
        self.window_seconds = window_seconds
        self.step_seconds = step_seconds
        self.keep_values = keep_values
        if bins < 1:
            raise DetectorError(f"bins must be >= 1, got {bins!r}")
        self.timed = window_seconds is not None
        if self.timed:
            if step_seconds is None or window_seconds is None:
                raise DetectorError("window_seconds needs step_seconds")
            if not (step_seconds > 0 and window_seconds >= step_seconds):
                raise DetectorError(
                    f"need 0 < step_seconds <= window_seconds, got {step_seconds!r}, "
                    f"{window_seconds!r}"
                )
            ratio = window_seconds / step_seconds
            if abs(ratio - round(ratio)) > 1e-9 * ratio:
                raise DetectorError("window_seconds must be a whole number of step_seconds")
            self.ring_size = round(ratio)
            if keep_values:
                raise DetectorError("keep_values needs a count window (window_events)")
        else:
            if window_events is None or step_events is None:
                raise DetectorError("give window_events and step_events, or window_seconds")
            if not (step_events >= 1 and window_events >= step_events):
                raise DetectorError(
                    f"need 1 <= step_events <= window_events, got {step_events!r}, "
                    f"{window_events!r}"
                )
            if window_events % step_events:
                raise DetectorError("window_events must be a multiple of step_events")
            self.ring_size = window_events // step_events
        self._reset()

    def _reset(self) -> None:
        R, B = self.ring_size, self.bins
        # Count clock: R closed slots; time clock: R closed slots + the open one.
        self._ring = np.zeros((R + (1 if self.timed else 0), B), dtype=np.int64)
        self._total = np.zeros(B, dtype=np.int64)  # count clock: sum of the ring
        self._open = np.zeros(B, dtype=np.int64)  # count clock: the filling slot
        self._open_n = 0
        self._pos = 0  # count clock: next slot to overwrite (the oldest)
        self._closed = 0  # sub-windows closed so far
        self._head: int | None = None  # time clock: newest slot id
        self._first = 0  # time clock: first slot id seen
        self._late = 0  # time clock: events dropped for being older than the window
        self._ring_values: list[FloatArray] = [np.empty(0)] * R
        self._open_values: list[FloatArray] = []
        self._cache: IntArray | None = None
        # When a list: (batch index where a sub-window closed, window total and closed
        # sub-windows after it, the closed slot's [first offset, last offset, earliest
        # time, latest time]), appended by ``add`` (count clock), for verdicts taken
        # inside a batch; None: not recorded.
        self.history: list[tuple[int, IntArray, int, FloatArray]] | None = None
        # Where each slot lies in its partition: first and last Kafka offset (-1: not
        # known) and earliest and latest event time (NaN: not known); row R of the
        # count clock is the filling slot.
        slots = R + 1
        self._off = np.full((slots, 2), -1, dtype=np.int64)
        self._tspan = np.full((slots, 2), np.nan, dtype=np.float64)

    # ----------------------------------------------------------------- reading
    @property
    def ready(self) -> bool:
        """True once the window spans ``R`` closed sub-windows."""
        if self.timed:
            return self._head is not None and self._head - self.ring_size >= self._first
        return self._closed >= self.ring_size

    @property
    def late(self) -> int:
        """Events dropped because they were older than the window (time clock)."""
        return self._late

    @property
    def counts(self) -> IntArray:
        """Bin counts of the window (closed sub-windows only), int64, shape ``(B,)``."""
        if self._cache is None:
            if self.timed:
                if self._head is None:
                    self._cache = np.zeros(self.bins, dtype=np.int64)
                else:
                    R1 = self.ring_size + 1
                    self._cache = self._ring.sum(axis=0) - self._ring[self._head % R1]
            else:
                self._cache = self._total.copy()
        return self._cache

    def values(self) -> FloatArray:
        """Raw values of the window (count clock with ``keep_values``), any order."""
        if not self.keep_values:
            raise DetectorError("this window keeps no values")
        return np.concatenate(self._ring_values) if self._ring_values else np.empty(0)

    def time_bounds(self) -> tuple[float | None, float | None]:
        """Event-time span ``[start, end)`` of the window in seconds (time clock)."""
        if not self.timed or self._head is None or self.step_seconds is None:
            return None, None
        dt = self.step_seconds
        return (self._head - self.ring_size) * dt, self._head * dt

    # ----------------------------------------------------------------- writing
    def add(
        self,
        bins: IntArray,
        times: FloatArray | None = None,
        values: FloatArray | None = None,
        offsets: IntArray | None = None,
    ) -> bool:
        """Fold in a batch of bin indices (int64, shape ``(m,)``, in ``0..B-1``).

        ``times`` (seconds, shape ``(m,)``) is required by the time clock; ``values``
        (shape ``(m,)``) by ``keep_values``. ``offsets`` (the events' Kafka offsets in
        one partition, ascending) and, on the count clock, ``times`` are optional:
        with them the window knows where it lies (``span``). Returns True when at
        least one sub-window closed in this batch and the window is ready: a new
        verdict is due.
        """
        if bins.size == 0:
            return False
        self._cache = None
        if self.timed:
            if times is None:
                raise DetectorError("an event-time window needs `times`")
            return self._add_timed(bins, np.asarray(times, dtype=np.float64), offsets)
        if self.keep_values and values is None:
            raise DetectorError("keep_values needs `values`")
        return self._add_counted(bins, values, offsets, times)

    def span(self) -> tuple[int, int | None, int | None, float | None, float | None]:
        """Where the window (closed sub-windows) lies: ``(events, first offset, last
        offset, earliest event time, latest event time)``; None where not known."""
        if self.timed:
            if self._head is None:
                return 0, None, None, None, None
            R1 = self.ring_size + 1
            ids = np.arange(self._head - self.ring_size, self._head) % R1
        else:
            n = min(self._closed, self.ring_size)
            if n == 0:
                return 0, None, None, None, None
            ids = (self._pos - 1 - np.arange(n)) % self.ring_size
        events = int(self._ring[ids].sum())
        off = self._off[ids]
        known = off[:, 0] >= 0
        first = int(off[known, 0].min()) if known.any() else None
        last = int(off[known, 1].max()) if known.any() else None
        ts = self._tspan[ids]
        tk = ~np.isnan(ts[:, 0])
        start = float(ts[tk, 0].min()) if tk.any() else None
        end = float(ts[tk, 1].max()) if tk.any() else None
        return events, first, last, start, end

    def _bincount_rows(self, rows: IntArray, bins: IntArray, n_rows: int) -> IntArray:
        B = self.bins
        flat = np.bincount(rows * B + bins, minlength=n_rows * B)
        return flat.reshape(n_rows, B).astype(np.int64, copy=False)

    def _push(self, row: IntArray, vals: FloatArray | None, off: IntArray, ts: FloatArray) -> None:
        self._total += row - self._ring[self._pos]
        self._ring[self._pos] = row
        self._off[self._pos] = off
        self._tspan[self._pos] = ts
        if vals is not None:
            self._ring_values[self._pos] = vals
        self._pos = (self._pos + 1) % self.ring_size
        self._closed += 1

    def _segment_span(
        self,
        offsets: IntArray | None,
        times: FloatArray | None,
        a: int,
        b: int,
        into: int | None = None,
    ) -> tuple[IntArray, FloatArray]:
        """Span of events ``a:b`` of the batch, widened by slot ``into``'s span."""
        off = np.array([-1, -1], dtype=np.int64)
        ts = np.array([np.nan, np.nan])
        if b > a:
            if offsets is not None:
                off[:] = offsets[a], offsets[b - 1]
            if times is not None:
                seg = times[a:b]
                ts[:] = seg.min(), seg.max()
        if into is not None:
            old_off, old_ts = self._off[into], self._tspan[into]
            if old_off[0] >= 0:
                off = old_off.copy() if off[0] < 0 else np.array([old_off[0], off[1]])
            if not np.isnan(old_ts[0]):
                ts = np.array([np.fmin(old_ts[0], ts[0]), np.fmax(old_ts[1], ts[1])])
        return off, ts

    def _push_many(
        self, rows: IntArray, start: int, offsets: IntArray | None, times: FloatArray | None
    ) -> None:
        """Close ``len(rows)`` full sub-windows at once (batch events ``start`` on, ``S``
        each): the same ring, totals, spans and history as one ``_push`` per row."""
        S, R = int(self.step_events or 1), self.ring_size
        kk = int(rows.shape[0])
        starts = start + np.arange(kk) * S
        off = np.full((kk, 2), -1, dtype=np.int64)
        if offsets is not None:
            off[:, 0], off[:, 1] = offsets[starts], offsets[starts + S - 1]
        ts = np.full((kk, 2), np.nan)
        if times is not None:
            seg = np.asarray(times[start : start + kk * S], dtype=np.float64).reshape(kk, S)
            ts[:, 0], ts[:, 1] = seg.min(axis=1), seg.max(axis=1)
        # The window after the j-th push is the R newest of (the ring, oldest first,
        # then the pushed rows): differences of one cumulative sum.
        seq = np.concatenate([self._ring[(self._pos + np.arange(R)) % R], rows])
        csum = np.zeros((R + kk + 1, self.bins), dtype=np.int64)
        np.cumsum(seq, axis=0, out=csum[1:])
        totals = csum[R + 1 :] - csum[1 : kk + 1]
        keep = min(kk, R)  # rows pushed later in the batch overwrite earlier ones
        where = (self._pos + np.arange(kk - keep, kk)) % R
        self._ring[where] = rows[kk - keep :]
        self._off[where] = off[kk - keep :]
        self._tspan[where] = ts[kk - keep :]
        self._total = totals[-1].copy()
        if self.history is not None:
            spans = np.concatenate([off.astype(np.float64), ts], axis=1)
            for j in range(kk):
                self.history.append((int(starts[j]) + S, totals[j], self._closed + j + 1, spans[j]))
        self._pos = (self._pos + kk) % R
        self._closed += kk

    def _record(self, end: int) -> None:
        """History entry of the sub-window just closed at batch index ``end``."""
        assert self.history is not None
        last = (self._pos - 1) % self.ring_size
        span = np.concatenate([self._off[last].astype(np.float64), self._tspan[last]])
        self.history.append((end, self._total.copy(), self._closed, span))

    def _add_counted(
        self,
        bins: IntArray,
        values: FloatArray | None,
        offsets: IntArray | None = None,
        times: FloatArray | None = None,
    ) -> bool:
        S, B, R = int(self.step_events or 1), self.bins, self.ring_size
        m = int(bins.size)
        need = max(S - self._open_n, 0)
        if m < need:
            self._open += np.bincount(bins, minlength=B)
            self._open_n += m
            self._off[R], self._tspan[R] = self._segment_span(offsets, times, 0, m, R)
            if values is not None:
                self._open_values.append(np.asarray(values, dtype=np.float64))
            return False
        # The filling slot closes at index `need`; full slots follow; the tail opens.
        self._open += np.bincount(bins[:need], minlength=B)
        first_vals = None
        if values is not None:
            first_vals = np.concatenate([*self._open_values, values[:need]])
        self._push(self._open, first_vals, *self._segment_span(offsets, times, 0, need, R))
        record = self.history is not None
        if self.history is not None:
            self._record(need)
        rest, rest_vals = bins[need:], None if values is None else values[need:]
        k = int(rest.size) // S
        if k:
            # Slots that would be overwritten within this batch are skipped, unless
            # the window's history inside the batch is recorded.
            skip = 0 if record else max(k - R, 0)
            sub = rest[skip * S : k * S]
            rows = self._bincount_rows(np.arange(sub.size) // S, sub, k - skip)
            self._closed += skip
            if rest_vals is None:
                self._push_many(rows, need + skip * S, offsets, times)
                k_done = True
            else:
                k_done = False
            for j in range(0 if k_done else k - skip):
                v = None
                if rest_vals is not None:
                    v = rest_vals[(skip + j) * S : (skip + j + 1) * S].copy()
                a = need + (skip + j) * S
                self._push(rows[j].copy(), v, *self._segment_span(offsets, times, a, a + S))
                if self.history is not None:
                    self._record(a + S)
        tail = rest[k * S :]
        self._open = np.bincount(tail, minlength=B).astype(np.int64)
        self._open_n = int(tail.size)
        self._off[R], self._tspan[R] = self._segment_span(offsets, times, need + k * S, m)
        self._open_values = [] if rest_vals is None else [rest_vals[k * S :].copy()]
        return self.ready

    def _add_timed(self, bins: IntArray, times: FloatArray, offsets: IntArray | None) -> bool:
        R1, dt = self.ring_size + 1, float(self.step_seconds or 1.0)
        slot = np.floor(times / dt).astype(np.int64)
        kmax = int(slot.max())
        if self._head is None:
            self._head = kmax
            self._first = int(slot.min())
        advanced = kmax > self._head
        if advanced:
            self._advance(kmax)
        oldest = self._head - self.ring_size
        keep = slot >= oldest
        n_keep = int(np.count_nonzero(keep))
        self._late += int(slot.size) - n_keep
        if n_keep < slot.size:
            slot, bins, times = slot[keep], bins[keep], times[keep]
            offsets = None if offsets is None else offsets[keep]
        if n_keep:
            ids = slot % R1
            self._ring += self._bincount_rows(ids, bins, R1)
            ts = self._tspan
            lo = np.where(np.isnan(ts[:, 0]), np.inf, ts[:, 0])
            hi = np.where(np.isnan(ts[:, 1]), -np.inf, ts[:, 1])
            np.minimum.at(lo, ids, times)
            np.maximum.at(hi, ids, times)
            ts[:, 0] = np.where(np.isinf(lo), np.nan, lo)
            ts[:, 1] = np.where(np.isinf(hi), np.nan, hi)
            if offsets is not None:
                big = np.iinfo(np.int64).max
                first = np.where(self._off[:, 0] < 0, big, self._off[:, 0])
                np.minimum.at(first, ids, offsets)
                np.maximum.at(self._off[:, 1], ids, offsets)
                self._off[:, 0] = np.where(first == big, -1, first)
        return advanced and self.ready

    def _advance(self, new_head: int) -> None:
        assert self._head is not None
        R1 = self.ring_size + 1
        if new_head - self._head >= R1:
            self._ring[:] = 0
            self._off[:R1] = -1
            self._tspan[:R1] = np.nan
        else:
            ids = np.arange(self._head + 1, new_head + 1) % R1
            self._ring[ids] = 0
            self._off[ids] = -1
            self._tspan[ids] = np.nan
        self._closed += new_head - self._head
        self._head = new_head

    def merge(self, other: SlidingCounts) -> None:
        """Add ``other``'s window (same construction) to this one.

        Time clock: sub-windows are matched by event time, so the result is the
        window of the union of both event sets (exact). Count clock: sub-windows are
        matched by age (newest with newest) and the open sub-windows are added; the
        window then holds the events of both partitions' windows.
        """
        if (self.bins, self.ring_size, self.timed, self.keep_values) != (
            other.bins,
            other.ring_size,
            other.timed,
            other.keep_values,
        ):
            raise DetectorError("can only merge windows built with the same arguments")
        self._cache = None
        if self.timed:
            if other._head is None:
                return
            if self._head is None:
                self._head, self._first = other._head, other._first
                self._ring[:] = other._ring
                self._late += other._late
                self._closed = other._closed
                return
            if other._head > self._head:
                self._advance(other._head)
            R1 = self.ring_size + 1
            ids = np.arange(
                max(other._head - self.ring_size, self._head - self.ring_size), other._head + 1
            )
            self._ring[ids % R1] += other._ring[ids % R1]
            self._first = min(self._first, other._first)
            self._late += other._late
            return
        R = self.ring_size
        # Slot of age a (0 = newest) sits at (pos - 1 - a) mod R.
        ages = np.arange(R)
        mine, theirs = (self._pos - 1 - ages) % R, (other._pos - 1 - ages) % R
        self._ring[mine] += other._ring[theirs]
        if self.keep_values:
            for a in range(R):
                self._ring_values[mine[a]] = np.concatenate(
                    [self._ring_values[mine[a]], other._ring_values[theirs[a]]]
                )
            self._open_values = [*self._open_values, *other._open_values]
        self._total += other._total
        self._open += other._open
        self._open_n += other._open_n
        self._closed = max(self._closed, other._closed)

    # ------------------------------------------------------------------- state
    def _step(self) -> float:
        step = self.step_seconds if self.timed else self.step_events
        return float(step or 0)

    def state(self) -> dict[str, Any]:
        """Plain values and numpy arrays; ``restore`` continues exactly."""
        st: dict[str, Any] = {
            "ring": self._ring.copy(),
            "total": self._total.copy(),
            "open": self._open.copy(),
            "open_n": self._open_n,
            "pos": self._pos,
            "closed": self._closed,
            "head": self._head,
            "first": self._first,
            "late": self._late,
            "off": self._off.copy(),
            "tspan": self._tspan.copy(),
            "step": self._step(),
        }
        if self.keep_values:
            st["ring_values"] = np.concatenate(self._ring_values)
            st["ring_lengths"] = np.asarray([v.size for v in self._ring_values], np.int64)
            st["open_values"] = (
                np.concatenate(self._open_values) if self._open_values else np.empty(0)
            )
        return st

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state()`` of a window built with the same arguments."""
        ring = np.asarray(state["ring"], dtype=np.int64)
        if ring.shape != self._ring.shape:
            raise DetectorError(
                f"window state has shape {ring.shape}, this window needs {self._ring.shape}"
            )
        step = self._step()
        if "step" in state and float(state["step"]) != step:
            raise DetectorError(
                f"window state has sub-windows of {state['step']}, this window needs {step}"
            )
        self._ring = ring.copy()
        self._total = np.asarray(state["total"], dtype=np.int64).copy()
        self._open = np.asarray(state["open"], dtype=np.int64).copy()
        self._open_n = int(state["open_n"])
        self._pos = int(state["pos"])
        self._closed = int(state["closed"])
        self._head = None if state["head"] is None else int(state["head"])
        self._first = int(state["first"])
        self._late = int(state["late"])
        self._cache = None
        if "off" in state:  # states written before windows knew their span lack it
            self._off = np.asarray(state["off"], dtype=np.int64).reshape(-1, 2).copy()
            self._tspan = np.asarray(state["tspan"], dtype=np.float64).reshape(-1, 2).copy()
        else:
            self._off = np.full((self._ring.shape[0] + (0 if self.timed else 1), 2), -1, np.int64)
            self._tspan = np.full(self._off.shape, np.nan)
        if self.keep_values:
            vals = np.asarray(state["ring_values"], dtype=np.float64)
            cuts = np.cumsum(np.asarray(state["ring_lengths"], dtype=np.int64))[:-1]
            self._ring_values = [v.copy() for v in np.split(vals, cuts)]
            ov = np.asarray(state["open_values"], dtype=np.float64)
            self._open_values = [ov.copy()] if ov.size else []


class WindowedDetector:
    """Shared machinery of the binned drift detectors (not used directly).

    Subclasses set ``name``, build ``self._window`` in ``_reset`` through
    ``_make_window`` and implement ``evaluate``.

    False alarms: each closed sub-window (every ``step`` events or seconds) is one
    test at level ``alpha = step / (ert * family_size)``. By Bonferroni's bound the
    expected number of false verdicts per event (or second) is at most
    ``1 / (ert * family_size)``: the expected run length between false alarms of
    this detector is at least ``ert * family_size``, and over ``family_size``
    detectors sharing the budget (fields x detectors of a stream) at least ``ert``.
    The expected count of false verdicts is alpha per test whatever the overlap of
    windows (measured close to it in bench/RESULTS.md); overlapping windows cluster
    them, so distinct false alarms (episodes) are rarer than that.
    """

    name: ClassVar[str] = ""

    baseline: Any
    subject: str
    window_events: int | None
    step_events: int | None
    window_seconds: float | None
    step_seconds: float | None
    ert: float | None
    family_size: int
    _window: SlidingCounts

    def _init_window_args(
        self,
        window_events: int | None,
        step_events: int | None,
        window_seconds: float | None,
        step_seconds: float | None,
        ert: float | None,
        family_size: int,
    ) -> None:
        self.window_events = window_events
        self.step_events = step_events
        self.window_seconds = window_seconds
        self.step_seconds = step_seconds
        self.ert = ert
        self.family_size = family_size
        if family_size < 1:
            raise DetectorError(f"family_size must be >= 1, got {family_size!r}")
        timed = window_seconds is not None
        step = step_seconds if timed else step_events
        default = DEFAULT_ERT_SECONDS if timed else DEFAULT_ERT_EVENTS
        self._ert = float(default if ert is None else ert)
        if step is None or not step > 0:
            raise DetectorError(f"step must be > 0, got {step!r}")
        if not self._ert >= step:
            raise DetectorError(f"ert must be >= the step ({step}), got {ert!r}")
        self._alpha = float(step) / (self._ert * family_size)

    @property
    def alpha(self) -> float:
        """Significance level of each test: ``step / (ert * family_size)``."""
        return self._alpha

    def _make_window(self, bins: int, keep_values: bool = False) -> SlidingCounts:
        if self.window_seconds is not None:
            return SlidingCounts(
                bins, window_seconds=self.window_seconds, step_seconds=self.step_seconds
            )
        return SlidingCounts(
            bins,
            window_events=self.window_events,
            step_events=self.step_events,
            keep_values=keep_values,
        )

    def _bin(self, values: npt.ArrayLike) -> IntArray:
        b = self.baseline
        assert isinstance(b, NumericBaseline | CategoricalBaseline)
        return b.bin_index(values)

    def update(self, values: Any, times: FloatArray | None = None) -> list[Finding]:
        """Fold in a batch (shape ``(m,)``); a finding each time a sub-window closes.

        Returns at most one finding, on the window as it stands after the batch,
        when at least one sub-window closed in the batch and the window is full.
        """
        v = np.asarray(values)
        return self.update_bins(self._bin(v), times, v)

    def update_bins(
        self, bins: IntArray, times: FloatArray | None = None, values: Any = None
    ) -> list[Finding]:
        """Like ``update`` with bins precomputed by ``baseline.bin_index(values)``.

        One binning per field per batch can then feed several detectors. ``values``
        is needed only by detectors keeping raw values (exact KS).
        """
        if not self.accumulate(bins, times, values):
            return []
        finding = self.evaluate()
        return [] if finding is None else [finding]

    def accumulate(
        self,
        bins: IntArray,
        times: FloatArray | None = None,
        values: Any = None,
        offsets: IntArray | None = None,
    ) -> bool:
        """Fold pre-binned values into the window without judging it.

        Returns True when a sub-window closed and the window is full: a verdict is
        due. Used where several partitions' windows are merged before judging.
        ``offsets`` (one partition's Kafka offsets) let the window tell its span.
        """
        keep = self._window.keep_values
        vals = np.asarray(values, dtype=np.float64) if keep else None
        return self._window.add(np.asarray(bins, dtype=np.int64), times, vals, offsets)

    def span(self) -> tuple[int, int | None, int | None, float | None, float | None]:
        """``(events, first offset, last offset, start time, end time)`` of the window."""
        return self._window.span()

    def _reset(self) -> None:
        raise NotImplementedError

    def clear(self) -> None:
        """Forget the window (construction arguments and baseline stay)."""
        self._reset()

    def evaluate(self) -> Finding | None:
        """The verdict on the current window, or None while it is filling."""
        raise NotImplementedError

    def drifts(self) -> bool:
        """Whether ``evaluate`` would say ``drift`` (detectors override it with the
        decision alone, cheaper than a whole finding)."""
        finding = self.evaluate()
        return finding is not None and finding.drift

    def drifts_many(self, totals: IntArray, closed: IntArray) -> npt.NDArray[np.bool_]:
        """``drifts()`` of count windows holding ``totals[c]`` after ``closed[c]``
        sub-windows, for every ``c`` (shape ``(C, bins)`` and ``(C,)``); detectors
        override it with array operations. Leaves this (scratch) window loaded."""
        out = np.zeros(len(closed), dtype=bool)
        for c in range(len(closed)):
            self.load_counts(totals[c], int(closed[c]))
            out[c] = self.drifts()
        return out

    def _bounds(self, events: int) -> WindowBounds:
        start, end = self._window.time_bounds()
        return WindowBounds(events=events, start_time=start, end_time=end)

    @property
    def window_counts(self) -> IntArray:
        """Bin counts of the current window, int64, shape ``(bins,)``."""
        return self._window.counts

    def load_counts(self, total: IntArray, closed: int) -> None:
        """Make this (scratch) count window hold ``total`` after ``closed`` sub-windows
        (what a verdict reads), e.g. partitions' windows added up by the caller."""
        w = self._window
        if w.timed:
            raise DetectorError("load_counts needs a count window")
        w._total, w._closed, w._cache = total, int(closed), None

    def load_sum(self, others: list[Any]) -> bool:
        """Make this (scratch) detector's window the sum of ``others``' count windows.

        Only what a verdict reads is set (the window's total and how many sub-windows
        closed), so it costs one addition per partition; False (nothing done) for
        event-time windows and windows keeping raw values, which need ``merge``.
        """
        w = self._window
        if w.timed or w.keep_values:
            return False
        total = others[0]._window._total.copy()
        closed = others[0]._window._closed
        for o in others[1:]:
            total += o._window._total
            closed = max(closed, o._window._closed)
        w._total, w._closed, w._cache = total, closed, None
        return True

    def merge(self, other: Any) -> None:
        """Add ``other``'s window (a detector of the same class and arguments)."""
        if type(other) is not type(self) or other._params() != self._params():
            raise DetectorError("can only merge detectors of the same class and arguments")
        self._window.merge(other._window)

    def _params(self) -> dict[str, Any]:
        return {
            k: v for k, v in vars(self).items() if not k.startswith("_") and k not in ("baseline",)
        }

    def state(self) -> dict[str, Any]:
        """The window's state (the baseline and arguments are construction inputs)."""
        return {"detector": self.name, "window": self._window.state()}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state()`` of an instance built the same way."""
        if state.get("detector") != self.name:
            raise DetectorError(f"state of {state.get('detector')!r} given to {self.name!r}")
        self._window.restore(state["window"])

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"
