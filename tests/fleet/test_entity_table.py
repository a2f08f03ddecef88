"""EntityTable: statistics against references, late events, slots, state, merge, memory."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from detectors.base import DetectorError
from detectors.entity_table import EntityTable, EntityTableState, TableParams
from monitor.runtime.state import decode_state, encode_state


def _naive(xs: list[float], alpha: float, zmax: float, warmup: int) -> tuple[float, float, int]:
    """The documented recursion, one value at a time (reference for the kernel)."""
    mean = var = 0.0
    spike_at = -1
    for k, x in enumerate(xs):
        if k == 0:
            mean, var = x, 0.0
            continue
        d = x - mean
        sd = math.sqrt(var)
        z = d / sd if sd > 0 else (0.0 if d == 0 else math.copysign(math.inf, d))
        if k >= warmup and abs(z) > zmax:
            spike_at = k + 1
            d = math.copysign(zmax * sd, d)
        a = max(alpha, 1.0 / (k + 1))
        mean += a * d
        var = (1 - a) * (var + a * d * d)
    return mean, var, spike_at


def _single(
    values: np.ndarray, params: TableParams, times: np.ndarray | None = None
) -> EntityTable:
    t = EntityTable(("x",), params)
    n = len(values)
    slots = t.assign(np.zeros(n, dtype=np.int64))
    t.update(slots, np.arange(n, dtype=np.float64) if times is None else times, values[:, None])
    return t


def test_running_mean_and_variance_equal_numpy_while_young() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, 40)
    t = _single(x, TableParams(alpha=0.02, spike_z=1e9))  # 1/alpha = 50 > 40 values
    assert t.mean[0, 0] == pytest.approx(np.mean(x), rel=1e-12)
    assert t.var[0, 0] == pytest.approx(np.var(x), rel=1e-12)


@pytest.mark.parametrize("alpha", [0.02, 0.1, 0.5])
def test_ewma_and_spikes_equal_the_reference_recursion(alpha: float) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_t(3, 2000)
    x[1500] = 80.0
    params = TableParams(alpha=alpha, spike_z=6.0, warmup=30)
    t = _single(x, params)
    mean, var, spike_at = _naive(x.tolist(), alpha, 6.0, 30)
    assert t.mean[0, 0] == pytest.approx(mean, rel=1e-9)
    assert t.var[0, 0] == pytest.approx(var, rel=1e-9)
    assert int(t.spike_at[0]) == spike_at


def test_run_lengths_match_groupby() -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(0, 3, 500).astype(np.float64)
    t = EntityTable(("x",))
    slots = t.assign(np.zeros(len(x), dtype=np.int64))
    runs = []
    for i in range(len(x)):  # the run after every event
        t.update(slots[i : i + 1], np.array([float(i)]), x[i : i + 1, None])
        runs.append(int(t.run[0, 0]))
    expected = [j + 1 for _, g in itertools.groupby(x.tolist()) for j in range(len(list(g)))]
    assert runs == expected
    last_run = len(list(next(itertools.groupby(x[::-1].tolist()))[1]))
    assert t.run_start[0, 0] == len(x) - last_run


def test_gap_ewma_and_out_of_order_policy() -> None:
    times = np.array([0.0, 10.0, 20.0, 15.0, 40.0, -500.0])
    t = EntityTable(("x",), TableParams(gap_alpha=0.5, lateness=100.0))
    slots = t.assign(np.zeros(len(times), dtype=np.int64))
    late = t.update(slots, times, np.zeros((len(times), 1)))
    # 15.0 is out of order but within lateness: folded, not a gap; -500 is late: dropped
    assert late == 1 and t.late == 1
    assert int(t.count[0]) == 5
    assert t.last_time[0] == 40.0 and t.first_time[0] == 0.0
    gap, dev = 10.0, 10.0 * 2 / math.e
    for g in (10.0, 20.0):
        dev += 0.5 * (abs(g - gap) - dev)
        gap += 0.5 * (g - gap)
    assert t.gap[0] == pytest.approx(gap) and t.gap_dev[0] == pytest.approx(dev)
    assert t.watermark == 40.0


def test_nan_times_and_invalid_values_are_counted_not_folded() -> None:
    t = EntityTable(("x", "y"), low=np.array([0.0, 0.0]), high=np.array([1.0, 1.0]))
    slots = t.assign(np.zeros(4, dtype=np.int64))
    values = np.array([[0.5, 0.5], [5.0, 0.5], [0.5, np.nan], [0.5, 0.5]])
    valid = np.array([[True, True], [True, True], [True, False], [True, True]])
    late = t.update(slots, np.array([0.0, 1.0, np.nan, 3.0]), values, valid)
    assert late == 1  # the NaN time
    assert int(t.count[0]) == 3 and int(t.oor[0]) == 1 and int(t.invalid[0]) == 0
    assert int(t.nval[0, 0]) == 2  # 5.0 is out of range: not in the mean
    t.update(slots[:1], np.array([4.0]), values[2:3], valid[2:3])
    assert int(t.invalid[0]) == 1


def test_slots_capacity_and_eviction() -> None:
    t = EntityTable(("x",), capacity_limit=3)
    slots = t.assign(np.array([10, 11, 12, 13, -1]))
    assert slots.tolist() == [0, 1, 2, -1, -1]
    t.update(slots, np.arange(5.0), np.zeros((5, 1)))
    t.evict(np.array([1]))
    assert t.tracked == 2 and t.evicted == 1 and t.code_to_slot[11] == -1
    again = t.assign(np.array([13, 10]))
    assert again.tolist() == [1, 0]  # the freed slot is reused, state reset
    assert int(t.count[1]) == 0 and int(t.count[0]) == 1
    assert t.assign(np.array([14])).tolist() == [-1]


def test_state_round_trip_through_the_checkpoint_codec() -> None:
    rng = np.random.default_rng(3)
    t = EntityTable(("a", "b"), TableParams(spike_z=5.0, warmup=5))
    codes = rng.integers(0, 50, 3000)
    slots = t.assign(codes)
    t.update(slots, np.sort(rng.uniform(0, 1000, 3000)), rng.normal(0, 1, (3000, 2)))
    t.evict(np.array([3, 4]))
    names = [f"dev-{i}" for i in range(50)]
    blob = encode_state(t.state(names).to_dict())
    restored_state = EntityTableState.from_dict(decode_state(blob))
    other = EntityTable(("a", "b"), TableParams(spike_z=5.0, warmup=5))
    codes_back = np.array([int(i.removeprefix("dev-")) for i in restored_state.ids])
    assert other.restore(restored_state, codes_back) == t.tracked
    for code in np.unique(codes).tolist():
        a, b = t.code_to_slot[code], other.code_to_slot[code]
        if a < 0:
            assert b < 0
            continue
        for name in ("count", "last_time", "gap", "spike_at", "oor_rate"):
            assert getattr(t, name)[a] == getattr(other, name)[b], name
        for name in ("mean", "var", "recent", "run", "last"):
            np.testing.assert_array_equal(getattr(t, name)[a], getattr(other, name)[b])
    assert other.watermark == t.watermark and other.evicted == t.evicted
    with pytest.raises(DetectorError, match="fields"):
        EntityTable(("a",)).restore(restored_state, codes_back)


def test_merge_keeps_the_newest_view_and_adds_counts() -> None:
    a, b = EntityTable(("x",)), EntityTable(("x",))
    a.update(a.assign(np.array([1, 2])), np.array([0.0, 5.0]), np.array([[1.0], [2.0]]))
    b.update(b.assign(np.array([2, 3])), np.array([9.0, 1.0]), np.array([[7.0], [3.0]]))
    a.merge(b)
    s1, s2, s3 = (int(a.code_to_slot[c]) for c in (1, 2, 3))
    assert a.tracked == 3
    assert a.count[[s1, s2, s3]].tolist() == [1, 2, 1]
    assert a.last[s2, 0] == 7.0 and a.last_time[s2] == 9.0 and a.first_time[s2] == 5.0
    assert a.last[s3, 0] == 3.0 and a.watermark == 9.0


def test_memory_per_device_under_one_kilobyte_for_five_fields() -> None:
    base, per_field = EntityTable.bytes_per_entity(5)
    t = EntityTable(tuple(f"f{i}" for i in range(5)), capacity_limit=100_000)
    t.assign(np.arange(100_000))
    measured = t.nbytes() / 100_000
    assert base + 5 * per_field <= measured <= 1024
    print(f"bytes per device: {measured:.0f} (fixed {base}, per field {per_field})")
