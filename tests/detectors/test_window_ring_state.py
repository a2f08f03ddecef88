"""WindowRing keeps sub-window counts narrow inside; its state is unchanged by that."""

from __future__ import annotations

import numpy as np

from detectors.window_ring import WindowRing


def _fed(step: int) -> WindowRing:
    ring = WindowRing(np.array([0, 5, 8]), ring_size=3, step=step)
    rng = np.random.default_rng(3)
    flat = np.stack([rng.integers(0, 6, 40), 5 + rng.integers(0, 3, 40)]).astype(np.int32)
    flat[0, ::7] = 8  # not counted
    totals, closed = np.zeros((2, 8), np.int64), np.zeros(2, np.int64)
    ring.fold(flat, np.arange(40), np.arange(40), None, np.array([20, 40]), totals, closed)
    return ring


def test_state_types_do_not_depend_on_the_step() -> None:
    small, large = _fed(4), _fed(70_000)
    for ring in (small, large):
        state = ring.state()
        assert state["ring"].dtype == np.int32
        assert state["total"].dtype == np.int64 and state["open"].dtype == np.int64
    assert small.ring.dtype == np.uint16 and large.ring.dtype == np.int32


def test_restore_continues_exactly_and_keeps_counts_that_do_not_fit() -> None:
    ring = _fed(4)
    again = WindowRing(np.array([0, 5, 8]), ring_size=3, step=4)
    again.restore(ring.state())
    for key, value in ring.state().items():
        a, b = np.asarray(value, dtype=np.float64), np.asarray(again.state()[key], np.float64)
        assert np.array_equal(a, b, equal_nan=True), key
    odd = ring.state()
    odd["ring"] = odd["ring"].copy()
    odd["ring"][0, 0] = 100_000  # no real sub-window of 4 events holds this
    third = WindowRing(np.array([0, 5, 8]), ring_size=3, step=4)
    third.restore(odd)
    assert third.state()["ring"][0, 0] == 100_000


def test_spans_are_kept_until_the_window_moves() -> None:
    ring = _fed(4)
    first = ring.spans()
    assert ring.spans() is first  # kept: the window did not move
    assert not first.events.flags.writeable and not first.spans.flags.writeable
    fresh = ring._spans_now()
    assert np.array_equal(first.events, fresh.events)
    assert np.array_equal(first.spans, fresh.spans, equal_nan=True)
    flat = np.full((2, 6), 2, dtype=np.int32)
    flat[1] = 6
    totals, closed = np.zeros((1, 8), np.int64), np.zeros(1, np.int64)
    ring.fold(flat, np.arange(6), np.arange(100, 106), None, np.array([6]), totals, closed)
    moved = ring.spans()
    assert moved is not first and moved.spans[0, 1] == 103  # the last closed sub-window's
    assert np.array_equal(moved.events, ring._spans_now().events)
    assert np.array_equal(moved.spans, ring._spans_now().spans, equal_nan=True)
    other = WindowRing(np.array([0, 5, 8]), ring_size=3, step=4)
    before = other.spans()
    other.restore(ring.state())
    assert other.spans() is not before
    assert np.array_equal(other.spans().spans, moved.spans, equal_nan=True)
