"""Stream windows whatever the partition count, and a verdict at every step."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from detectors.baseline import Baseline, QualityBaseline, build_numeric
from monitor.pipeline.decode import Batch, StreamDecoder
from monitor.pipeline.drift import DriftStage
from tests.drift_utils import feed, numeric_stage, round_robin, shifted_stream, stream_spec

N, SHIFT_AT = 50_000, 25_000


def _delay(partitions: int, detector: str, batch: int = 1_000, seed: int = 3) -> int:
    stage = numeric_stage(["x"], partitions, detectors=(detector,))
    cols = shifted_stream(N, SHIFT_AT, 0.25, ["x"], seed=seed)
    fed = feed(stage, cols, round_robin(N, partitions), batch)
    first = fed.first_drift("x", detector)
    assert first is not None, f"{detector} silent with {partitions} partitions"
    assert first > SHIFT_AT, "flagged before the shift"
    return first - SHIFT_AT


@pytest.mark.slow
def test_a_quarter_sd_shift_is_flagged_as_early_with_16_partitions_as_with_one() -> None:
    one = _delay(1, "ks")
    for partitions in (4, 16):
        assert _delay(partitions, "ks") <= 1.5 * one


def test_the_stream_window_covers_window_events_of_the_stream() -> None:
    for partitions in (1, 3, 16):
        stage = numeric_stage(["x"], partitions)
        cols = shifted_stream(12_000, 12_000, 0.0, ["x"], seed=1)
        fed = feed(stage, cols, round_robin(12_000, partitions), 1_000)
        verdicts = [(pos, f) for pos, f in fed.findings if f.detector == "ks"]
        first_pos, first = verdicts[0]
        # The first verdict after about window.events stream events, on about that many.
        assert 10_000 <= first_pos <= 10_000 + 1_000
        assert 10_000 <= first.window.events <= 10_000 + 10 * partitions  # R * ceil(step / P) * P
        assert len(first.partitions) == partitions
        assert sum(w.events for w in first.partitions) == first.window.events


def test_the_detection_position_does_not_depend_on_the_batch_size() -> None:
    for partitions in (1, 4):
        positions = {
            batch: _delay(partitions, "ks", batch=batch) for batch in (1_000, 10_000, 3_333)
        }
        assert max(positions.values()) - min(positions.values()) <= 1_000, positions


def test_one_verdict_per_step_even_inside_a_large_batch() -> None:
    # Shifted from the start: every verdict drifts, and every drifting verdict is
    # reported (a clean one only at a batch's last step boundary).
    stage = numeric_stage(["x"], 2)
    cols = shifted_stream(30_000, 0, 1.0, ["x"], seed=2)
    fed = feed(stage, cols, round_robin(30_000, 2), 10_000)
    ks = [pos for pos, f in fed.findings if f.detector == "ks" and f.drift]
    assert ks == list(range(10_000, 30_001, 1_000))
    calm = numeric_stage(["x"], 2)
    quiet = feed(
        calm, shifted_stream(30_000, 0, 0.0, ["x"], seed=2), round_robin(30_000, 2), 10_000
    )
    assert [pos for pos, f in quiet.findings if f.detector == "ks"] == [10_000, 20_000, 30_000]


def test_adwin_fires_with_four_partitions() -> None:
    stage = numeric_stage(["x"], 4, detectors=("adwin",))
    cols = shifted_stream(N, SHIFT_AT, 0.5, ["x"], seed=5)
    fed = feed(stage, cols, round_robin(N, 4), 1_000)
    first = fed.first_drift("x", "adwin")
    assert first is not None and SHIFT_AT < first < SHIFT_AT + 15_000
    change = next(f for _, f in fed.findings if f.drift)
    details = dict(change.details)
    assert details["new_mean"] - details["old_mean"] > 0.25
    assert change.window.partition is not None and change.window.first_offset is not None
    assert f"at offset {change.window.first_offset}" in change.summary


def test_windows_of_another_partition_count_restart_instead_of_failing() -> None:
    four = numeric_stage(["x"], 4)
    cols = shifted_stream(4_000, 4_000, 0.0, ["x"], seed=1)
    feed(four, cols, round_robin(4_000, 4), 1_000)
    state = four.partition_state(0)
    assert state is not None
    two: DriftStage = numeric_stage(["x"], 2)
    two.restore_partition(0, state)  # logged, windows restart
    restored = two.partition_state(0)
    assert restored is not None
    ring = restored.windows["ring"]  # every binned detector's window, one ring
    assert int(np.asarray(ring).sum()) == 0


@pytest.mark.parametrize(("partitions", "blocks"), [(1, False), (4, False), (4, True)])
def test_evidence_offsets_bound_the_judged_window_for_any_batching(
    partitions: int, blocks: bool
) -> None:
    """Every finding's per-partition offsets hold exactly its events, and the
    statistic recomputed from the events at those offsets is the reported one
    (``blocks``: partitions take turns of 1,500 events, so most batches leave some
    partitions' windows as they were)."""
    from detectors.ks import ks_from_counts

    n = 24_000
    cols = shifted_stream(n, 10_000, 0.25, ["x"], seed=7)
    parts = round_robin(n, partitions)
    if blocks:
        parts = ((np.arange(n) // 1_500) % partitions).astype(np.int32)
    for batch in (1_000, 5_000, 7_777):
        stage = numeric_stage(["x"], partitions, detectors=("ks",), window=4_000, step=500)
        base = stage.baseline.fields["x"]  # type: ignore[union-attr]
        cdf = np.cumsum(base.counts[:-1].astype(np.float64)) / base.n
        fed = feed(stage, cols, parts, batch)
        assert fed.findings
        for _, f in fed.findings:
            values = []
            for w in f.partitions:
                assert w.first_offset is not None and w.last_offset is not None
                assert w.events == w.last_offset - w.first_offset + 1
                rows = np.flatnonzero(parts == w.partition)[w.first_offset : w.last_offset + 1]
                values.append(cols["x"][rows])
            counts = np.bincount(base.bin_index(np.concatenate(values)), minlength=base.bins)
            assert float(ks_from_counts(cdf, counts)) == pytest.approx(f.statistic, abs=1e-12)


def test_batches_smaller_than_a_step_fold_in_without_verdicts() -> None:
    stage = numeric_stage(["x"], 4, window=4_000, step=1_000)
    cols = shifted_stream(12_000, 12_000, 0.0, ["x"], seed=3)
    fed = feed(stage, cols, round_robin(12_000, 4), 300)  # most batches hold no boundary
    assert next(pos for pos, f in fed.findings if f.detector == "ks") == 4_000


def test_the_checkpointed_windows_do_not_depend_on_the_order_fields_are_listed() -> None:
    from monitor.pipeline.decode import StreamDecoder

    one = numeric_stage(["a", "b", "c"], 2)
    spec = one.spec.model_copy(update={"fields": {k: one.spec.fields[k] for k in "cab"}})
    two = DriftStage(spec, StreamDecoder(spec), one.baseline)
    two.set_partition_count(2)
    cols = shifted_stream(6_000, 6_000, 0.0, ["a", "b", "c"], seed=4)
    for stage in (one, two):
        feed(stage, cols, round_robin(6_000, 2), 1_000)
    for slot in (0, 1):
        a, b = one.partition_state(slot), two.partition_state(slot)
        assert a is not None and b is not None
        for key in ("starts", "ring", "total", "segment_counts"):
            assert np.array_equal(a.windows[key], b.windows[key]), key


def test_a_restart_keeps_the_step_boundaries() -> None:
    """Verdict positions count from the checkpointed windows, not from process start:
    restarting from checkpoints taken between two boundaries changes nothing."""
    from monitor.pipeline.decode import Batch

    n, parts = 30_000, round_robin(30_000, 2)
    cols = shifted_stream(n, 15_000, 0.5, ["x"], seed=9)
    offsets = np.zeros(n, np.int64)
    for p in (0, 1):
        offsets[parts == p] = np.arange(int((parts == p).sum()))

    def run(stage: DriftStage, a: int, b: int) -> list[tuple[str, float, int, int | None]]:
        out = []
        for lo in range(a, b, 1_700):
            hi = min(lo + 1_700, b)
            batch = Batch(
                stream="s",
                n_input=hi - lo,
                rows=np.arange(hi - lo, dtype=np.int64),
                columns={"x": cols["x"][lo:hi]},
                valid={"x": np.ones(hi - lo, bool)},
            )
            for f in stage.update(batch, parts[lo:hi], offsets[lo:hi]):
                last = max(w.last_offset or 0 for w in f.partitions) if f.partitions else None
                out.append((f.detector, f.statistic, f.window.events, last))
        return out

    whole = numeric_stage(["x"], 2)
    reference = run(whole, 0, n)
    first = numeric_stage(["x"], 2)
    cut = 1_700 * 7  # 11,900: between two step boundaries
    before = run(first, 0, cut)
    second = numeric_stage(["x"], 2)
    for slot in (0, 1):
        state = first.partition_state(slot)
        assert state is not None
        second.restore_partition(slot, state)
    assert before + run(second, cut, n) == reference


def test_a_detector_with_a_window_of_its_own_keeps_per_detector_windows() -> None:
    from detectors.baseline import Baseline, build_numeric
    from monitor.pipeline.decode import StreamDecoder

    spec = stream_spec(
        {
            "x": {
                "type": "float",
                "detectors": {"ks": {"window_events": 4_000, "step_events": 500}},
            },
            "y": {"type": "float", "detectors": ["ks"]},
        }
    )
    rng = np.random.default_rng(0)
    base = {f: build_numeric(rng.normal(size=50_000)) for f in ("x", "y")}
    stage = DriftStage(spec, StreamDecoder(spec), Baseline("b", "2026-11-30", "t", base))
    stage.set_partition_count(2)
    fed = feed(
        stage, shifted_stream(12_000, 6_000, 1.0, ["x", "y"], seed=2), round_robin(12_000, 2), 1_000
    )
    state = stage.partition_state(0)
    assert state is not None and not state.windows and set(state.binned) == {"x", "y"}
    assert fed.first_drift("x", "ks") is not None and fed.first_drift("y", "ks") is not None


@pytest.mark.parametrize("grouped", [False, True])
def test_one_call_binning_and_the_adwin_worker_change_nothing(
    grouped: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Columns as rows of one matrix (binned in one compiled call) and ADWIN folded
    on the worker thread give the findings and states of the field-by-field path."""
    import monitor.pipeline.drift as drift

    fields = ["a", "b", "c"]
    n, parts = 24_000, 4
    cols = shifted_stream(n, 15_000, 0.4, fields, seed=5)
    rng = np.random.default_rng(6)
    cols["b"][rng.random(n) < 0.1] = np.nan  # a field with nulls: masks not all valid
    if grouped:  # batches of one partition each, as the direct fetch hands them out
        partitions = np.repeat(np.arange(n // 1_500) % parts, 1_500).astype(np.int32)
    else:
        partitions = round_robin(n, parts)
    detectors = ("ks", "psi", "adwin", "data_quality")
    runs = []
    for as_matrix, parallel in ((False, 10**12), (True, 10**12), (True, 1)):
        monkeypatch.setattr(drift, "_PARALLEL_VALUES", parallel)
        stage = numeric_stage(fields, parts, detectors=detectors, window=6_000, step=600)
        fed = feed(stage, cols, partitions, 1_500, as_matrix=as_matrix)
        states = [stage.partition_state(p) for p in range(parts)]
        runs.append((fed.findings, [None if s is None else s.to_plain() for s in states]))
    assert any(f.drift for _, f in runs[0][0])
    for findings, states in runs[1:]:
        assert findings == runs[0][0]
        assert repr(states) == repr(runs[0][1])


@pytest.mark.parametrize("as_matrix", [False, True])
def test_partitions_in_runs_fold_in_place_as_if_regrouped(
    as_matrix: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch holding a run of rows per partition (as the Kafka source hands them
    over) is folded without regrouping its rows: the findings (with their evidence)
    and the checkpointed states equal those of the regrouping path."""
    import monitor.pipeline.drift as drift

    fields = ["a", "b", "c"]
    n, parts, batch = 24_000, 4, 2_000
    cols = shifted_stream(n, 15_000, 0.4, fields, seed=7)
    rng = np.random.default_rng(8)
    cols["c"][rng.random(n) < 0.1] = np.nan
    # Each batch: runs of uneven length per partition, in a varying partition order.
    partitions = np.empty(n, dtype=np.int32)
    for a in range(0, n, batch):
        order = rng.permutation(parts)
        cuts = np.sort(rng.choice(np.arange(1, batch), parts - 1, replace=False))
        for p, run in zip(order, np.split(np.arange(a, a + batch), cuts), strict=True):
            partitions[run] = p
    detectors = ("ks", "psi", "adwin", "data_quality")
    runs = []
    for keep in (False, True):
        monkeypatch.setattr(drift, "_KEEP_RUNS", keep)
        stage = numeric_stage(fields, parts, detectors=detectors, window=6_000, step=600)
        fed = feed(stage, cols, partitions, batch, as_matrix=as_matrix)
        states = [stage.partition_state(p) for p in range(parts)]
        runs.append((fed.findings, [None if s is None else s.to_plain() for s in states]))
    assert any(f.drift for _, f in runs[0][0])
    assert runs[1][0] == runs[0][0]
    assert repr(runs[1][1]) == repr(runs[0][1])


@pytest.mark.parametrize("as_matrix", [False, True])
def test_sixteen_and_thirty_two_bit_flat_bins_give_the_same_windows(
    as_matrix: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flat bins of a narrow row are kept in 16 bits: findings and checkpointed
    states equal those of 32-bit bins (field by field and in one call, with nulls
    so that the data-quality rows are written too)."""
    import monitor.pipeline.drift as drift

    fields = ["a", "b", "c"]
    n, parts = 18_000, 3
    cols = shifted_stream(n, 11_000, 0.4, fields, seed=9)
    rng = np.random.default_rng(10)
    cols["a"][rng.random(n) < 0.2] = np.nan
    partitions = round_robin(n, parts)
    detectors = ("ks", "psi", "adwin", "data_quality")
    runs = []
    for limit in (2**16 - 1, 0):  # 16-bit bins, then 32-bit ones
        monkeypatch.setattr(drift, "_NARROW_FLAT", limit)
        stage = numeric_stage(fields, parts, detectors=detectors, window=6_000, step=600)
        fed = feed(stage, cols, partitions, 2_500, as_matrix=as_matrix)
        states = [stage.partition_state(p) for p in range(parts)]
        runs.append((fed.findings, [None if s is None else s.to_plain() for s in states]))
        assert stage._buffers["flat16" if limit else "flat"].dtype == (
            np.uint16 if limit else np.int32
        )
    assert any(f.drift for _, f in runs[0][0])
    assert runs[1][0] == runs[0][0]
    assert repr(runs[1][1]) == repr(runs[0][1])


def test_a_failing_fold_waits_for_the_adwin_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """When the window fold raises (a stage error), update returns only after the
    worker's ADWIN fold has ended: nothing folds in the background afterwards."""
    import threading
    import time

    import monitor.pipeline.drift as drift

    slow_fold = drift._update_adwins

    def slow(jobs: list[tuple[object, ...]]) -> list[int | None]:
        time.sleep(0.3)  # the worker still folding when the window fold fails
        return slow_fold(jobs)

    monkeypatch.setattr(drift, "_update_adwins", slow)
    stage = numeric_stage(["a", "b"], 1, detectors=("ks", "adwin"), window=4_000, step=400)
    cols = shifted_stream(20_000, 10_000, 0.0, ["a", "b"], seed=2)
    feed(stage, {k: v[:4_000] for k, v in cols.items()}, round_robin(4_000, 1), 4_000)
    started = threading.Event()

    def failing(*args: object, **kwargs: object) -> list[object]:
        started.set()
        raise RuntimeError("a bug meeting some data")

    monkeypatch.setattr(stage, "_fold_rings", failing)
    with pytest.raises(RuntimeError, match="a bug"):
        feed(stage, {k: v[4_000:] for k, v in cols.items()}, round_robin(16_000, 1), 16_000)
    assert started.is_set()
    seen = [det._n_seen for det in stage._partition(0).raw["a"]]
    assert seen == [20_000]  # the worker's fold of the failed batch had ended


def test_clean_verdicts_from_arrays_equal_the_detectors_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batch's clean verdicts built from arrays (``_Screens.clean``) are the
    findings the detectors' own ``evaluate`` gives, evidence included."""
    import monitor.pipeline.drift as drift

    fields = ["a", "b", "c"]
    n, parts = 30_000, 4
    cols = shifted_stream(n, 20_000, 0.3, fields, seed=8)
    rng = np.random.default_rng(9)
    cols["b"][rng.random(n) < 0.15] = np.nan
    partitions = np.repeat(np.arange(n // 2_000) % parts, 2_000).astype(np.int32)
    detectors = ("ks", "psi", "data_quality")
    runs = []
    for from_arrays in (True, False):
        if not from_arrays:
            monkeypatch.setattr(drift._Screens, "clean", lambda self, *a, **k: {})
        stage = numeric_stage(fields, parts, detectors=detectors, window=6_000, step=500)
        runs.append(feed(stage, cols, partitions, 2_000, as_matrix=True).findings)
    clean = [f for _, f in runs[0] if not f.drift]
    assert len(clean) > 50 and any(f.drift for _, f in runs[0])
    assert runs[0] == runs[1]


def test_the_compiled_screens_flag_what_each_detector_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At every step boundary of a drifting stream with nulls, the screens' flags for
    KS, PSI and data_quality (one compiled pass each) are the detectors' own
    ``drifts_many`` on the same window counts (a verdict right at its threshold, within
    the screens' 1e-9 slack, would be the only difference)."""
    import monitor.pipeline.drift as drift

    seen: list[tuple[np.ndarray, np.ndarray, np.ndarray, drift._Screens]] = []
    flags = drift._Screens.flags

    def spy(self: drift._Screens, totals: np.ndarray, closed: np.ndarray) -> np.ndarray:
        out = flags(self, totals, closed)
        seen.append((totals.copy(), closed.copy(), out.copy(), self))
        return out

    monkeypatch.setattr(drift._Screens, "flags", spy)
    fields = ["a", "b", "c"]
    n, parts = 40_000, 3
    cols = shifted_stream(n, 22_000, 0.4, fields, seed=4)
    rng = np.random.default_rng(5)
    cols["b"][rng.random(n) < np.where(np.arange(n) < 30_000, 0.1, 0.3)] = np.nan
    plain = numeric_stage(fields, parts, detectors=("ks", "psi", "data_quality"), window=4_000)
    assert plain.baseline is not None
    quality = {f: QualityBaseline(np.array([90_000, 10_000, 0, 0, 0, 0])) for f in fields}
    baseline = dataclasses.replace(plain.baseline, quality=quality, content_hash="")
    stage = DriftStage(plain.spec, StreamDecoder(plain.spec), baseline)
    stage.set_partition_count(parts)
    feed(stage, cols, round_robin(n, parts), 2_500, as_matrix=True)
    flagged = 0
    for totals, closed, out, screens in seen:
        starts = screens.layout.starts
        for j, (plan, i, seg) in enumerate(screens.items):
            a, b = int(starts[seg]), int(starts[seg + 1])
            want = plan.merged[i].drifts_many(totals[:, a:b].astype(np.int64), closed)
            assert out[:, j].tolist() == want.tolist(), (plan.name, plan.merged[i].name)
            flagged += int(want.sum())
    kinds = {type(it[0].merged[it[1]]).__name__ for it in seen[0][3].items}
    assert kinds == {"KS", "PSI", "QualityRates"} and flagged > 20


def test_baselines_of_extreme_values_bin_within_their_fields() -> None:
    """Baselines built from subnormals, one value, two values, huge magnitudes and the
    whole float range, fed values of every kind (NaN, infinities, subnormals, values
    outside the baseline): every field's window counts exactly its own valid values,
    and a control field beside them sees every event (a bin computed past a field's
    range would land in another field's counts)."""
    rng = np.random.default_rng(12)
    n_base, n, window = 5_000, 12_000, 4_000
    makers = {
        "subnormal": lambda k: rng.uniform(0, 1e-320, k),
        "constant": lambda k: np.full(k, 3.0),
        "two_point": lambda k: rng.integers(0, 2, k).astype(float),
        "huge": lambda k: rng.normal(0, 1e300, k),
        "whole_range": lambda k: rng.choice([-1.7e308, 1.7e308, 0.0], k),
        "control": lambda k: rng.normal(size=k),
    }
    fields = list(makers)
    spec = stream_spec(
        {f: {"type": "float", "detectors": ["ks", "psi"]} for f in fields},
        format="json",
        window={"events": window, "step": 1_000},
    )
    base = {f: build_numeric(make(n_base)) for f, make in makers.items()}
    stage = DriftStage(spec, StreamDecoder(spec), Baseline("x", "2026-11-30", "test", base))
    stage.set_partition_count(2)
    weird = np.array([np.nan, np.inf, -np.inf, 5e-324, -5e-324, 1e308, -1e308, 0.0, 3.0])
    cols = {f: make(n) for f, make in makers.items()}
    for f in fields[:-1]:  # every field but the control gets weird values too
        at = rng.random(n) < 0.2
        cols[f][at] = rng.choice(weird, int(at.sum()))
    for as_matrix in (True, False):
        stage = DriftStage(spec, StreamDecoder(spec), Baseline("x", "2026-11-30", "t", base))
        stage.set_partition_count(2)
        parts = round_robin(n, 2)
        for a in range(0, n, 3_000):
            b = a + 3_000
            batch_cols = {f: v[a:b] for f, v in cols.items()}
            valid = {f: np.isfinite(v) for f, v in batch_cols.items()}
            if as_matrix:
                values_m, valid_m = (
                    np.stack(list(batch_cols.values())),
                    np.stack(list(valid.values())),
                )
                batch_cols = {f: values_m[i] for i, f in enumerate(fields)}
                valid = {f: valid_m[i] for i, f in enumerate(fields)}
            bt = Batch(
                stream="s", n_input=3_000, rows=np.arange(3_000), columns=batch_cols, valid=valid
            )
            stage.update(bt, parts[a:b], np.arange(a, b) // 2)
        got = {(f.subject, f.detector): dict(f.details)["n_window"] for f in stage.evaluate()}
        for f in fields:
            want = float(np.isfinite(cols[f][n - window :]).sum())
            assert got[(f, "ks")] == got[(f, "psi")] == want, (f, as_matrix)
        assert got[("control", "ks")] == window
