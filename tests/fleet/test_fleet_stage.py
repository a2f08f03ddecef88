"""The fleet stage on a synthetic fleet: exact detection, silence, restarts, limits."""

from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from detectors.base import Finding
from monitor.config.schema import ConfigError, parse_config
from monitor.dev.fleet_demo import Failure, FleetChunk, FleetScenario, fleet_stream
from monitor.metrics import Metrics
from monitor.pipeline.decode import StreamDecoder
from monitor.pipeline.fleet import FleetStage, FleetState
from monitor.runtime.state import decode_state, encode_state
from tests.fleet.helpers import CLOCK, device, feed, fleet_spec, make_stage, to_batch

DAY = 86400.0
FAILURES = (
    Failure("silent", tuple(range(0, 50)), 2.0 * DAY),
    Failure("stuck", tuple(range(100, 110)), 2.0 * DAY + 1000.0),
    Failure("out_of_range", tuple(range(200, 210)), 2.5 * DAY),
    Failure("spike", tuple(range(300, 310)), 3.0 * DAY),
    Failure("fleet_drift", tuple(range(400, 410)), 3.5 * DAY),
)


def _plain(stage: FleetStage, partition: int) -> dict[str, object]:
    """A partition's typed state as the checkpoint stores it (round-trips exactly)."""
    state = stage.partition_state(partition)
    assert isinstance(state, FleetState)
    plain = state.to_plain()
    back = FleetState.from_plain(plain)
    assert back.table.ids == state.table.ids and back.table.fields == state.table.fields
    return plain


def _onsets(findings: list[Finding]) -> dict[str, set[int]]:
    out: dict[str, set[int]] = defaultdict(set)
    for f in findings:
        if f.drift:
            out[f.detector].add(device(f))
    return out


@pytest.mark.slow
def test_each_condition_is_caught_for_exactly_its_devices() -> None:
    """10,000 devices reporting every 10 minutes for 5 days, failures at known times,
    and a fleet-wide environment change on day 4 that must page nobody."""
    scenario = FleetScenario(devices=10_000, failures=FAILURES, fleet_shift_at=4.0 * DAY)
    spec = fleet_spec(
        max_entities=20_000,
        events_per_day=1.44e6,
        evaluate_every="1200s",
        detectors={
            "silent": {},
            "stuck": {"events": 12},
            "out_of_range": {},
            "spike": {},
            "fleet_drift": {},
        },
    )
    stage = make_stage(spec, 10_000)
    timed: list[tuple[Finding, float]] = []
    findings = feed(stage, scenario, 0.0, 5.0 * DAY, chunk_seconds=1200.0, timed=timed)
    onsets = _onsets(findings)
    print("\ncondition      devices  caught  false  delay min/median/max (s)")
    for failure in FAILURES:
        name = failure.condition
        caught = onsets.get(name, set())
        assert caught == set(failure.devices), name
        delays = sorted(now - failure.at for f, now in timed if f.drift and f.detector == name)
        print(
            f"{name:<14} {len(failure.devices):>7} {len(caught):>7} "
            f"{len(caught - set(failure.devices)):>6}  "
            f"{delays[0]:.0f} / {delays[len(delays) // 2]:.0f} / {delays[-1]:.0f}"
        )
        assert (
            delays[-1]
            < {
                "silent": 2400,
                "stuck": 9000,
                "out_of_range": 15000,
                "spike": 1800,
                "fleet_drift": 54000,
            }[name]
        )
    assert set(onsets) == {f.condition for f in FAILURES}
    # spikes are momentary: the spiking devices recovered, and so got resolutions
    recovered = {device(f) for f in findings if f.detector == "spike" and not f.drift}
    assert recovered == set(range(300, 310))


@pytest.mark.slow
def test_a_stationary_fleet_of_10000_devices_is_silent_for_a_week() -> None:
    """Default thresholds (1 false device-alert per day budget), 10,000 devices every
    10 minutes for 7 days (10 million events), with a fleet-wide shift mid-week."""
    scenario = FleetScenario(devices=10_000, fleet_shift_at=3.0 * DAY, seed=11)
    stage = make_stage(fleet_spec(evaluate_every="1800s"), 10_000)
    findings = feed(stage, scenario, 0.0, 7.0 * DAY, chunk_seconds=3 * 3600.0)
    assert findings == []
    assert stage.tracked == 10_000 and stage.late == 0 and stage.rejected == 0


def _device_state(stage: FleetStage) -> dict[str, tuple[object, ...]]:
    names = stage.names()
    out = {}
    for p, t in stage.tables.items():
        for slot in np.flatnonzero(t.occupied).tolist():
            out[str(names[int(t.code[slot])])] = (
                p,
                int(t.count[slot]),
                float(t.last_time[slot]),
                float(t.gap[slot]),
                float(t.gap_dev[slot]),
                float(t.oor_rate[slot]),
                int(t.spike_at[slot]),
                tuple(t.mean[slot].tolist()),
                tuple(t.var[slot].tolist()),
                tuple(t.recent[slot].tolist()),
                tuple(t.run[slot].tolist()),
                tuple(t.last[slot].tolist()),
            )
    return out


def test_restart_from_checkpoints_equals_an_uninterrupted_run() -> None:
    scenario = FleetScenario(
        devices=300,
        period=60.0,
        failures=(
            Failure("stuck", (5, 6), 3000.0),
            Failure("spike", (7,), 5000.0),
            Failure("silent", (8,), 4000.0),
        ),
    )
    spec = fleet_spec(evaluate_every="60s")
    whole = make_stage(spec, 300)
    feed(whole, scenario, 0.0, 3 * 3600.0, partitions=3, chunk_seconds=600.0)

    first = make_stage(spec, 300)
    feed(first, scenario, 0.0, 5000.0, partitions=3, chunk_seconds=250.0)
    saved = {p: encode_state(_plain(first, p)) for p in first.tables}
    # a new process: its vocabulary numbers the devices differently
    decoder = StreamDecoder(spec)
    assert decoder.entities is not None
    decoder.entities.add([f"dev-{i:05d}" for i in reversed(range(300))])
    second = FleetStage(spec, decoder, clock=lambda: CLOCK)
    for p, blob in saved.items():
        second.restore_partition(p, second.decode_state(decode_state(blob)))
    for chunk in scenario.chunks(5000.0, 3 * 3600.0, 900.0):
        codes = np.array([decoder.entities.codes[f"dev-{c:05d}"] for c in chunk.codes.tolist()])
        parts = (chunk.codes % 3).astype(np.int32)
        batch = to_batch(chunk)
        import dataclasses

        second.update(dataclasses.replace(batch, entity=codes), parts)
    assert _device_state(second) == _device_state(whole)


def _chunk(codes: np.ndarray, times: np.ndarray) -> FleetChunk:
    return FleetChunk(codes.astype(np.int64), times.astype(np.float64), np.zeros((len(codes), 5)))


def test_eviction_of_the_longest_silent_and_rejections() -> None:
    registry = CollectorRegistry()
    spec = fleet_spec(max_entities=100)
    decoder = StreamDecoder(spec)
    assert decoder.entities is not None
    decoder.entities.add([f"dev-{i:05d}" for i in range(400)])
    stage = FleetStage(spec, decoder, metrics=Metrics(registry), clock=lambda: CLOCK)
    zeros = np.zeros(100, dtype=np.int32)
    # devices 0..99 in time order, device i last seen at time 1000 + (i * 37) % 100
    seen = (np.arange(100) * 37) % 100
    order = np.argsort(seen)
    stage.update(to_batch(_chunk(order, 1000.0 + seen[order])), zeros)
    assert stage.tracked == 100
    # 30 new devices: the 30 devices last seen earliest make room
    stage.update(to_batch(_chunk(np.arange(100, 130), np.full(30, 2000.0))), zeros[:30])
    oldest = {i for i in range(100) if (i * 37) % 100 < 30}
    t = stage.tables[0]
    tracked = set(t.code[: t.high_water][t.occupied].tolist())
    assert tracked == (set(range(100)) - oldest) | set(range(100, 130))
    assert stage.evicted == 30 and stage.tracked == 100
    # 150 new devices in one batch: 100 fit (evicting every old one), 50 are rejected
    stage.update(
        to_batch(_chunk(np.arange(200, 350), np.full(150, 3000.0))), np.zeros(150, np.int32)
    )
    assert stage.tracked == 100 and stage.rejected == 50
    assert set(t.code[: t.high_water][t.occupied].tolist()) == set(range(200, 300))
    value = registry.get_sample_value
    assert value("driftwarden_fleet_evicted_devices_total", {"stream": "fleet"}) == 130
    assert value("driftwarden_fleet_rejected_events_total", {"stream": "fleet"}) == 50
    assert value("driftwarden_fleet_tracked_devices", {"stream": "fleet"}) == 100


def test_late_events_are_counted_and_not_folded() -> None:
    registry = CollectorRegistry()
    spec = fleet_spec(allowed_lateness="60s")
    decoder = StreamDecoder(spec)
    assert decoder.entities is not None
    decoder.entities.add(["dev-00000"])
    stage = FleetStage(spec, decoder, metrics=Metrics(registry), clock=lambda: CLOCK)
    scenario = FleetScenario(devices=1, period=10.0)
    chunk = next(scenario.chunks(0.0, 100.0))
    stage.update(to_batch(chunk), np.zeros(len(chunk.codes), dtype=np.int32))
    count = int(stage.tables[0].count[0])
    late_times = chunk.times[:3] - 100.0  # 100 s behind the first events: late
    ooo_times = np.full(2, chunk.times[-1] - 30.0)  # 30 s behind: out of order, folded
    lateb = type(chunk)(chunk.codes[:5], np.r_[late_times, ooo_times], chunk.values[:5])
    stage.update(to_batch(lateb), np.zeros(5, dtype=np.int32))
    assert stage.late == 3 and int(stage.tables[0].count[0]) == count + 2
    assert stage.tables[0].last_time[0] == chunk.times[-1]
    # a clock far in the future: dropped and counted, the watermark stays
    ahead = type(chunk)(chunk.codes[:1], np.array([CLOCK + 10 * 86400.0]), chunk.values[:1])
    stage.update(to_batch(ahead), np.zeros(1, dtype=np.int32))
    assert stage.late == 4 and stage.tables[0].watermark == chunk.times[-1]
    late = registry.get_sample_value("driftwarden_fleet_late_events_total", {"stream": "fleet"})
    assert late == 4


def test_a_quiet_partition_is_judged_by_wall_clock() -> None:
    spec = fleet_spec(quiet_after="5m", evaluate_every="60s")
    wall = [CLOCK]
    decoder = StreamDecoder(spec)
    assert decoder.entities is not None
    decoder.entities.add([f"dev-{i:05d}" for i in range(20)])
    stage = FleetStage(spec, decoder, clock=lambda: wall[0])
    scenario = FleetScenario(devices=20, period=10.0)
    feed(stage, scenario, 0.0, 3600.0, partitions=2, chunk_seconds=60.0)
    assert stage.tick() == []
    wall[0] += 600.0  # ten minutes without any event, by the wall clock
    silent = {device(f) for f in stage.tick() if f.drift and f.detector == "silent"}
    assert silent == set(range(20))
    wall[0] += 10.0  # ticks are at most one per evaluate_every of wall-clock time
    assert stage.tick() == []


def test_status_is_a_bounded_typed_top_k() -> None:
    scenario = FleetScenario(
        devices=200, period=60.0, failures=(Failure("silent", tuple(range(40)), 4 * 3600.0),)
    )
    registry = CollectorRegistry()
    spec = fleet_spec(evaluate_every="60s", top_k=5)
    decoder = StreamDecoder(spec)
    assert decoder.entities is not None
    decoder.entities.add([f"dev-{i:05d}" for i in range(200)])
    stage = FleetStage(spec, decoder, metrics=Metrics(registry), clock=lambda: CLOCK)
    feed(stage, scenario, 0.0, 6 * 3600.0, chunk_seconds=300.0)
    status = stage.status()
    assert dict(status.unhealthy)["silent"] == 40 and status.healthy == 160
    worst = dict(status.worst)["silent"]
    assert len(worst) == 5 and all(d.score > 1.0 for d in worst)
    assert [d.score for d in worst] == sorted((d.score for d in worst), reverse=True)
    assert all(int(d.entity.removeprefix("dev-")) < 40 for d in worst)
    json.dumps(status.to_dict(), allow_nan=False)
    value = registry.get_sample_value
    labels = {"stream": "fleet", "condition": "silent"}
    assert value("driftwarden_fleet_unhealthy_devices", labels) == 40
    assert value("driftwarden_fleet_detections_total", labels) == 40
    assert value("driftwarden_fleet_healthy_devices", {"stream": "fleet"}) == 160


@pytest.mark.parametrize(
    ("fleet", "stream_change", "message"),
    [
        ({"bogus": 1}, {}, "unknown key"),
        ({"detectors": ["nope"]}, {}, "unknown entity detector"),
        ({"detectors": {"silent": {"k": 3}}}, {}, "has no parameter"),
        ({"fields": {"nothere": {}}}, {}, "not a numeric field"),
        ({}, {"entity": None}, "needs the stream's entity"),
        ({"false_alerts_per_day": 0}, {}, "greater than 0"),
    ],
)
def test_fleet_config_is_validated(
    fleet: dict[str, object], stream_change: dict[str, object], message: str
) -> None:
    stream = {**fleet_stream(), **stream_change}
    stream["fleet"] = fleet
    raw = {"kafka": {"bootstrap.servers": "x:1"}, "streams": [stream]}
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, env={})


def test_integer_device_ids_survive_a_restore() -> None:
    spec = fleet_spec()
    decoder = StreamDecoder(spec)
    assert decoder.entities is not None
    decoder.entities.add([1000 + i for i in range(10)])  # ids sent as JSON integers
    stage = FleetStage(spec, decoder, clock=lambda: CLOCK)
    chunk = FleetChunk(np.arange(10, dtype=np.int64), np.arange(10.0), np.ones((10, 5)))
    stage.update(to_batch(chunk), np.zeros(10, dtype=np.int32))
    blob = encode_state(_plain(stage, 0))
    other_decoder = StreamDecoder(spec)
    other = FleetStage(spec, other_decoder, clock=lambda: CLOCK)
    other.restore_partition(0, other.decode_state(decode_state(blob)))
    assert other.tracked == 10
    assert other_decoder.entities is not None
    assert sorted(k for k in other_decoder.entities.codes if k is not None) == list(
        range(1000, 1010)
    )


def test_two_replicas_judge_devices_against_the_whole_fleet() -> None:
    """Replica a owns partitions 0-1, b owns 2-3; each sees the other's checkpointed
    tables (set_remote). Both use the fleet median of all devices, exactly as one
    process owning every partition, and together detect exactly what it detects."""
    scenario = FleetScenario(
        devices=400,
        period=60.0,
        failures=(
            Failure("fleet_drift", (1, 5, 9, 13), 3 * 3600.0),
            Failure("silent", (2, 6), 4 * 3600.0),
        ),
    )
    spec = fleet_spec(evaluate_every="600s")
    whole, a, b = (make_stage(spec, 400) for _ in range(3))
    for stage in (whole, a, b):
        stage._next_eval = math.inf  # evaluated below, after the states are exchanged
    owned = {id(a): {0, 1}, id(b): {2, 3}}
    found: dict[str, set[tuple[str, str, bool, float]]] = {"whole": set(), "pair": set()}
    for chunk in scenario.chunks(0.0, 6 * 3600.0, 600.0):
        parts = (chunk.codes % 4).astype(np.int32)
        batch = to_batch(chunk)
        whole.update(batch, parts)
        for stage in (a, b):
            mine = np.isin(parts, list(owned[id(stage)]))
            rows = np.flatnonzero(mine)
            sub = to_batch(FleetChunk(chunk.codes[rows], chunk.times[rows], chunk.values[rows]))
            stage.update(sub, parts[rows])
        for stage, other in ((a, b), (b, a)):
            states = {}
            for p in other.tables:
                state = other.partition_state(p)
                assert state is not None
                states[p] = stage.decode_state(decode_state(encode_state(state.to_plain())))
            stage.set_remote(states)
        centers = [s._contexts(CLOCK)[min(owned.get(id(s), {0}))] for s in (whole, a, b)]
        for ctx in centers[1:]:
            assert np.array_equal(ctx.center, centers[0].center, equal_nan=True)
            assert np.array_equal(ctx.scale, centers[0].scale, equal_nan=True)
        found["whole"] |= {
            (f.subject, f.detector, f.drift, f.statistic) for f in whole.evaluate(CLOCK)
        }
        for s in (a, b):
            found["pair"] |= {
                (f.subject, f.detector, f.drift, f.statistic) for f in s.evaluate(CLOCK)
            }
    assert found["pair"] == found["whole"]
    onsets = {(s, d) for s, d, drift, _ in found["whole"] if drift}
    assert {s for s, d in onsets if d == "fleet_drift"} == {device_name(i) for i in (1, 5, 9, 13)}
    assert {s for s, d in onsets if d == "silent"} == {device_name(i) for i in (2, 6)}
    # without the other replica's devices, a's fleet is another one
    alone = make_stage(spec, 400)
    for p in a.tables:
        state = a.partition_state(p)
        assert state is not None
        alone.restore_partition(p, state)
    center = alone._contexts(CLOCK)[0].center
    assert not np.array_equal(center, a._contexts(CLOCK)[0].center, equal_nan=True)


def device_name(i: int) -> str:
    return f"dev-{i:05d}"
