"""Sliding bin-count windows against direct recounts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.base import DetectorError
from detectors.window import SlidingCounts

B = 7


def _batches(sizes: list[int], seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    bins = rng.integers(0, B, sum(sizes))
    cuts = np.cumsum(sizes)[:-1]
    return bins, np.split(bins, cuts)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 70), min_size=1, max_size=30),
    step=st.integers(1, 9),
    ring=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_count_window_equals_recount(sizes: list[int], step: int, ring: int, seed: int) -> None:
    allbins, batches = _batches(sizes, seed)
    w = SlidingCounts(B, window_events=step * ring, step_events=step, keep_values=True)
    seen = 0
    for b in batches:
        due = w.add(b, values=b.astype(np.float64))
        seen += b.size
        closes = seen // step
        if w.ready:
            end = closes * step
            want = np.bincount(allbins[end - step * ring : end], minlength=B)
            np.testing.assert_array_equal(w.counts, want)
            np.testing.assert_array_equal(
                np.sort(w.values()), np.sort(allbins[end - step * ring : end].astype(float))
            )
        if due:
            assert w.ready


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=20),
    seed=st.integers(0, 2**16),
)
def test_time_window_equals_recount(sizes: list[int], seed: int) -> None:
    allbins, batches = _batches(sizes, seed)
    rng = np.random.default_rng(seed)
    # Mostly increasing times with some jitter (out-of-order events).
    times = np.cumsum(rng.exponential(0.3, allbins.size)) + rng.normal(0, 0.5, allbins.size)
    times = np.abs(times) + 100.0
    w = SlidingCounts(B, window_seconds=4.0, step_seconds=2.0)
    start = 0
    kept = np.zeros(allbins.size, dtype=bool)
    head = None
    for b in batches:
        t = times[start : start + b.size]
        slot = np.floor(t / 2.0).astype(int)
        head = int(slot.max()) if head is None else max(head, int(slot.max()))
        kept[start : start + b.size] = slot >= head - 2
        # events kept earlier may have been evicted since; recount from scratch
        w.add(b, times=t)
        start += b.size
        all_slots = np.floor(times[:start] / 2.0).astype(int)
        mask = kept[:start] & (all_slots >= head - 2) & (all_slots <= head - 1)
        want = np.bincount(allbins[:start][mask], minlength=B)
        np.testing.assert_array_equal(w.counts, want)
    assert w.late == int((~kept).sum())


def test_state_round_trip_and_merge_count() -> None:
    rng = np.random.default_rng(1)
    a = SlidingCounts(B, window_events=30, step_events=10, keep_values=True)
    b = SlidingCounts(B, window_events=30, step_events=10, keep_values=True)
    xa, xb = rng.integers(0, B, 95), rng.integers(0, B, 77)
    a.add(xa, values=xa.astype(float))
    b.add(xb, values=xb.astype(float))
    c = SlidingCounts(B, window_events=30, step_events=10, keep_values=True)
    c.restore(a.state())
    np.testing.assert_array_equal(c.counts, a.counts)
    c.merge(b)
    np.testing.assert_array_equal(c.counts, a.counts + b.counts)
    assert c.values().size == 60


def test_bad_arguments_name_the_bound() -> None:
    with pytest.raises(DetectorError, match="multiple of step_events"):
        SlidingCounts(3, window_events=10, step_events=3)
    with pytest.raises(DetectorError, match="step_seconds"):
        SlidingCounts(3, window_seconds=10.0)
    with pytest.raises(DetectorError, match="bins must be >= 1"):
        SlidingCounts(0, window_events=10, step_events=1)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 70), min_size=1, max_size=30),
    step=st.integers(1, 9),
    ring=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    record=st.booleans(),
)
def test_count_window_span_and_history_equal_recount(
    sizes: list[int], step: int, ring: int, seed: int, record: bool
) -> None:
    """Without raw values (sub-windows closed many at a time): counts, the span of
    the window (offsets = event index) and the recorded history inside each batch."""
    allbins, batches = _batches(sizes, seed)
    w = SlidingCounts(B, window_events=step * ring, step_events=step)
    seen = 0
    for b in batches:
        w.history = [] if record else None
        offsets = np.arange(seen, seen + b.size, dtype=np.int64)
        w.add(b, times=offsets.astype(np.float64) + 0.5, offsets=offsets)
        for end, total, closed, span in w.history or []:
            stop = seen + end  # the sub-window closed with event `stop - 1`
            assert stop % step == 0 and closed == stop // step
            lo = max(stop - step * ring, 0)
            np.testing.assert_array_equal(total, np.bincount(allbins[lo:stop], minlength=B))
            assert list(span) == [stop - step, stop - 1, stop - step + 0.5, stop - 0.5]
        seen += b.size
        if w.ready:
            end = seen // step * step
            want = np.bincount(allbins[end - step * ring : end], minlength=B)
            np.testing.assert_array_equal(w.counts, want)
            events, first, last, start, stop_t = w.span()
            assert (events, first, last) == (step * ring, end - step * ring, end - 1)
            assert (start, stop_t) == (end - step * ring + 0.5, end - 0.5)
