"""ADWIN against river's reference implementation, batch splits, state and modes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river import drift as river_drift

from detectors.adwin import ADWIN
from detectors.base import Detector, DetectorError

N = 12_000


def _stream(kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "stationary":
        return rng.normal(0.0, 1.0, N)
    if kind == "abrupt":
        means = np.repeat([0.0, 1.5, -0.5, 0.2], N // 4)
        return rng.normal(means, 1.0)
    if kind == "gradual":
        return rng.normal(0.0, 1.0, N) + np.linspace(0.0, 4.0, N)
    if kind == "bernoulli":
        return (rng.random(N) < np.linspace(0.2, 0.6, N)).astype(np.float64)
    raise AssertionError(kind)


def _random_splits(n: int, seed: int, max_batch: int = 700) -> list[int]:
    """Batch boundaries (exclusive ends) of a random split of ``range(n)``."""
    rng = np.random.default_rng(seed)
    ends, pos = [], 0
    while pos < n:
        pos = min(n, pos + int(rng.integers(1, max_batch)))
        ends.append(pos)
    return ends


def _run(det: ADWIN, xs: np.ndarray, ends: list[int]) -> list[int]:
    found, start = [], 0
    for end in ends:
        det.update(xs[start:end])
        found.extend(int(i) + start for i in det.last_detections)
        start = end
    return found


PARAMS = [
    {},  # river's defaults: delta=0.002, clock=32, max_buckets=5, min 5, grace 10
    {"delta": 0.05, "clock": 1},
    {"delta": 1e-4, "clock": 7, "max_buckets": 3, "min_window_length": 10, "grace_period": 50},
    {"delta": 0.01, "clock": 5, "max_buckets": 2, "min_window_length": 1, "grace_period": 0},
]


@pytest.mark.parametrize("kind", ["stationary", "abrupt", "gradual", "bernoulli"])
@pytest.mark.parametrize("params", PARAMS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_value_mode_matches_river(kind: str, params: dict[str, Any]) -> None:
    xs = _stream(kind, seed=7)
    ends = _random_splits(N, seed=11)
    river = river_drift.ADWIN(**params)
    ours = ADWIN(**params)
    river_found: list[int] = []
    ours_found: list[int] = []
    start = 0
    for end in ends:
        for i in range(start, end):
            river.update(float(xs[i]))
            if river.drift_detected:
                river_found.append(i)
        ours.update(xs[start:end])
        ours_found.extend(int(i) + start for i in ours.last_detections)
        assert ours.width == river.width
        assert ours.estimation == pytest.approx(river.estimation, rel=1e-12, abs=1e-9)
        assert ours.variance == pytest.approx(river.variance, rel=1e-12, abs=1e-9)
        assert ours.total == pytest.approx(river.total, rel=1e-12, abs=1e-9)
        start = end
    assert ours_found == river_found
    if kind != "stationary":
        assert river_found, "the drifting streams must exercise the cut path"


@pytest.mark.parametrize("mode", ["value", "subwindow"])
@settings(max_examples=25, deadline=None, derandomize=True, database=None)
@given(cuts=st.lists(st.integers(0, N), max_size=25))
def test_batch_split_invariance(mode: str, cuts: list[int]) -> None:
    xs = _stream("abrupt", seed=3)
    whole = ADWIN(mode=mode, subwindow=250)
    expected = _run(whole, xs, [N])
    split = ADWIN(mode=mode, subwindow=250)
    got = _run(split, xs, [*sorted(set(cuts) - {N}), N])
    assert got == expected
    assert expected, "the abrupt stream must be detected"
    assert split.width == whole.width
    assert split.variance == whole.variance
    assert split.estimation == whole.estimation


@pytest.mark.parametrize("mode", ["value", "subwindow"])
@pytest.mark.parametrize("stop", [1, 999, 3021, 6000, 9999])
def test_state_restore_continues_exactly(mode: str, stop: int) -> None:
    xs = _stream("gradual", seed=5)
    through = ADWIN(mode=mode, subwindow=100, clock=1)
    expected = _run(through, xs, [stop, N])

    first = ADWIN(mode=mode, subwindow=100, clock=1)
    got = _run(first, xs, [stop])
    state = first.state()
    for value in state.values():
        assert isinstance(value, int | float | list | np.ndarray)
    second = ADWIN(mode=mode, subwindow=100, clock=1)
    second.restore(state)
    second.update(xs[stop:])
    got.extend(int(i) + stop for i in second.last_detections)
    assert got == expected
    assert second.state()["fs"] == through.state()["fs"]
    assert second.n_detections == through.n_detections


def test_restore_right_after_a_detection() -> None:
    # The reset a change schedules for the next value must survive the checkpoint.
    xs = _stream("abrupt", seed=9)
    through = ADWIN()
    expected = _run(through, xs, [N])
    stop = expected[0] + 1
    first = ADWIN()
    first.update(xs[:stop])
    assert first.drift_detected
    second = ADWIN()
    second.restore(first.state())
    second.update(xs[stop:])
    assert [int(i) + stop for i in second.last_detections] == expected[1:]


def test_restore_rejects_other_construction() -> None:
    with pytest.raises(DetectorError, match="max_buckets"):
        ADWIN(max_buckets=3).restore(ADWIN().state())


def test_subwindow_mode_is_value_adwin_on_chunk_summaries() -> None:
    # With subwindow=1 the sub-window path must reduce to river's algorithm exactly.
    xs = _stream("gradual", seed=2)
    assert _run(ADWIN(mode="subwindow", subwindow=1), xs, [N]) == _run(ADWIN(), xs, [N])


@pytest.mark.parametrize("shift", [0.3, 1.0, 3.0])
def test_subwindow_delay_is_about_one_subwindow_more(shift: float) -> None:
    rng = np.random.default_rng(4)
    at, sub = 40_000, 1000
    xs = np.concatenate([rng.normal(0, 1, at), rng.normal(shift, 1, 20_000)])
    value_found = np.asarray(_run(ADWIN(), xs, [len(xs)]))
    sub_found = np.asarray(_run(ADWIN(mode="subwindow", subwindow=sub), xs, [len(xs)]))
    assert not (value_found < at).any()
    assert not (sub_found < at).any()
    value_delay = value_found[0] - at
    sub_delay = sub_found[0] - at
    assert (sub_found[0] + 1) % sub == 0  # reported at a chunk's last value
    assert sub_delay <= value_delay + 2 * sub


@pytest.mark.parametrize(("mode", "max_alarms"), [("value", 8), ("subwindow", 2)])
def test_rare_false_alarms_on_stationary_streams(mode: str, max_alarms: int) -> None:
    # Measured at the defaults: one false alarm per ~2e6 values in value mode, per
    # ~2e7 in sub-window mode (N(0, 1), 20 seeds x 1e6). 4e6 values here.
    alarms = 0
    for seed in range(10):
        xs = np.random.default_rng(100 + seed).normal(0.0, 1.0, 400_000)
        det = ADWIN(mode=mode)
        det.update(xs)
        alarms += det.n_detections
    assert alarms <= max_alarms


def test_finding_contents() -> None:
    xs = _stream("abrupt", seed=1)
    det = ADWIN(subject="temperature")
    assert det.update(xs[:0]) == []
    quiet = det.update(xs[:2000], times=np.arange(2000.0))
    assert len(quiet) == 1
    assert not quiet[0].drift
    assert quiet[0].statistic == 0.0
    assert quiet[0].window.end_time == 1999.0
    findings = det.update(xs[2000:])
    (finding,) = findings
    details = dict(finding.details)
    assert finding.detector == "adwin"
    assert finding.subject == "temperature"
    assert finding.drift
    assert finding.statistic == len(det.last_detections) == details["changes"] >= 1
    assert finding.threshold == 1.0
    assert details["width"] == det.width == finding.window.events
    assert details["estimation"] == det.estimation
    assert details["first_change_index"] == det.last_detections[0]
    assert det.last_detections.dtype == np.int64
    assert isinstance(det, Detector)


@pytest.mark.parametrize(
    ("kwargs", "bound"),
    [
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"clock": 0}, "clock"),
        ({"max_buckets": 1}, "max_buckets"),
        ({"min_window_length": 0}, "min_window_length"),
        ({"grace_period": -1}, "grace_period"),
        ({"mode": "chunks"}, "mode"),
        ({"subwindow": 0}, "subwindow"),
    ],
)
def test_bad_arguments_name_the_bound(kwargs: dict[str, Any], bound: str) -> None:
    with pytest.raises(DetectorError, match=bound):
        ADWIN(**kwargs)


def test_bad_values_are_rejected() -> None:
    det = ADWIN()
    with pytest.raises(DetectorError, match="finite"):
        det.update(np.array([1.0, np.nan]))
    with pytest.raises(DetectorError, match="1-D"):
        det.update(np.zeros((2, 2)))
    with pytest.raises(DetectorError, match="times"):
        det.update(np.zeros(3), times=np.zeros(2))


def test_update_many_is_update_of_each() -> None:
    from detectors.adwin import ADWIN, update_many

    rng = np.random.default_rng(11)
    kw = {"mode": "subwindow", "subwindow": 50, "min_window_length": 200, "delta": 1e-3}
    one = [ADWIN(**kw) for _ in range(5)]  # type: ignore[arg-type]
    many = [ADWIN(**kw) for _ in range(5)]  # type: ignore[arg-type]
    for step in range(30):
        shift = 1.5 if step >= 15 else 0.0
        batches = [rng.normal(shift * (i % 2), 1, int(rng.integers(0, 400))) for i in range(5)]
        want = [int(f.statistic) for d, b in zip(one, batches, strict=True) for f in d.update(b)]
        got = update_many(many, batches)
        assert [g for g, b in zip(got, batches, strict=True) if b.size] == want
        if step == 20:  # a restored instance leaves the shared arrays; the next call re-stacks
            many[2].restore(many[2].state())
        for a, b in zip(one, many, strict=True):
            sa, sb = a.state(), b.state()
            assert sa.keys() == sb.keys()
            for k in sa:
                assert np.array_equal(np.asarray(sa[k]), np.asarray(sb[k])), k
            assert a.last_detections.tolist() == b.last_detections.tolist()
    assert sum(d.n_detections for d in many) > 0


@pytest.mark.parametrize("in_place", [True, False])
def test_update_many_reads_rows_of_one_matrix_in_place_and_equals_update_of_each(
    in_place: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Columns that are rows (or parts of rows) of one matrix, as the decoder hands
    them out, are read where they are (long ones; short ones are copied end to end);
    either way the result is that of ``update`` per instance, in value mode too
    (change positions included)."""
    import detectors.adwin as adwin
    from detectors.adwin import ADWIN, update_many
    from detectors.views import views_of_one

    monkeypatch.setattr(adwin, "_IN_PLACE_MIN", 0 if in_place else 10**9)
    seen: list[bool] = []
    real = adwin.views_of_one

    def spy(arrays: list[np.ndarray]) -> object:
        seen.append(True)
        return real(arrays)

    monkeypatch.setattr(adwin, "views_of_one", spy)

    rng = np.random.default_rng(5)
    for kw in (
        {"mode": "subwindow", "subwindow": 20, "min_window_length": 50, "delta": 1e-3},
        {"mode": "value", "min_window_length": 10, "delta": 1e-2},
    ):
        one = [ADWIN(**kw) for _ in range(4)]  # type: ignore[arg-type]
        many = [ADWIN(**kw) for _ in range(4)]  # type: ignore[arg-type]
        for step in range(12):
            matrix = rng.normal(2.0 * (step >= 6), 1.0, (4, 300))
            lo = int(rng.integers(0, 50))
            views = [matrix[0], matrix[1, lo:], matrix[3, : 300 - lo], matrix[2, 10:20]]
            assert views_of_one(views) is not None
            want = [int(f.statistic) for d, v in zip(one, views, strict=True) for f in d.update(v)]
            assert update_many(many, views) == want
            for a, b in zip(one, many, strict=True):
                assert a.last_detections.tolist() == b.last_detections.tolist()
                assert a.state().keys() == b.state().keys()
                for k, v in a.state().items():
                    assert np.array_equal(np.asarray(v), np.asarray(b.state()[k])), k
        assert sum(d.n_detections for d in many) > 0
    assert bool(seen) == in_place


def test_update_many_refuses_a_non_finite_value_before_folding_anything() -> None:
    from detectors.adwin import ADWIN, update_many

    dets = [ADWIN(min_window_length=5) for _ in range(3)]
    matrix = np.random.default_rng(2).normal(size=(3, 100))
    update_many(dets, list(matrix))
    before = [d.state() for d in dets]
    matrix[2, 50] = np.nan
    with pytest.raises(DetectorError, match="finite"):
        update_many(dets, list(matrix))  # rows of one matrix
    with pytest.raises(DetectorError, match="finite"):
        update_many(dets, [m.copy() for m in matrix])  # separate arrays
    for d, b in zip(dets, before, strict=True):
        for k, v in d.state().items():
            assert np.array_equal(np.asarray(v), np.asarray(b[k])), k
