"""A churning fleet: far more distinct devices over time than ``max_entities``, at
most ``max_entities`` alive at once. The fleet stage evicts the longest-silent
devices and gives their ids back to the decoder (``release_entities``), so no new
device is ever refused; both decoding paths give the same codes throughout."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monitor.config.schema import StreamSpec, parse_config
from monitor.metrics import Metrics
from monitor.pipeline.decode import Batch, StreamDecoder
from monitor.pipeline.fleet import FleetStage

ALIVE = 40  # devices alive at once = max_entities
NEW_PER_BATCH = 8
BATCHES = 60  # 40 + 59 * 8 = 512 distinct devices over time
CLOCK = 2_000_000_000.0


def _spec(decoder: str, ints: bool = False) -> StreamSpec:
    stream = {
        "name": "fleet",
        "topic": "t",
        "entity": "id",
        "event_time": "ts",
        "max_entities": ALIVE,
        "decoder": decoder,
        "fields": {"x": {"type": "float"}},
        "fleet": {"max_entities": ALIVE, "evaluate_every": 3600},
    }
    config = parse_config({"kafka": {"bootstrap.servers": "127.0.0.1:1"}, "streams": [stream]})
    return config.streams[0]


def _device(i: int, ints: bool) -> Any:
    return 10**12 + i if ints else f"dev-{i:05d}"


def _batch(
    b: int, ints: bool, rng: np.random.Generator
) -> tuple[list[bytes | None], list[Any], set[Any]]:
    """Batch ``b``: the devices of the window ``8b .. 8b+39`` are tracked; all but the
    oldest 8 (silent since the last batch, replaced in the next) send one or two
    events each, shuffled, at times after every earlier batch. Returns the
    payloads, the device of each and the window."""
    first = b * NEW_PER_BATCH
    window = [_device(i, ints) for i in range(first, first + ALIVE)]
    ids = window[NEW_PER_BATCH:]
    picks = ids + [ids[j] for j in rng.integers(0, len(ids), ALIVE // 2).tolist()]
    rng.shuffle(picks)
    t0 = 1_000_000.0 + 100.0 * b
    payloads: list[bytes | None] = [
        json.dumps({"id": dev, "ts": t0 + 0.5 * k, "x": float(k)}).encode()
        for k, dev in enumerate(picks)
    ]
    return payloads, picks, set(window)


def _stage(decoder: str, registry: CollectorRegistry, ints: bool = False) -> FleetStage:
    spec = _spec(decoder, ints)
    return FleetStage(spec, StreamDecoder(spec), Metrics(registry), clock=lambda: CLOCK)


@pytest.mark.parametrize("ints", [False, True])
def test_a_churning_fleet_never_rejects_a_device(ints: bool) -> None:
    rng = np.random.default_rng(7)
    registries = {"compiled": CollectorRegistry(), "msgspec": CollectorRegistry()}
    stages = {mode: _stage(mode, reg, ints) for mode, reg in registries.items()}
    code_of: dict[Any, int] = {}  # a live device's code: stable while it is alive
    for b in range(BATCHES):
        payloads, picks, window = _batch(b, ints, rng)
        parts = np.array([hash(str(p)) % 2 for p in picks], dtype=np.int32)
        batches: dict[str, Batch] = {}
        for mode, stage in stages.items():
            batch = stage.decoder.decode(payloads)
            assert batch.n == len(payloads) and not batch.rejects
            assert (batch.entity >= 0).all() and batch.entity_overflow == 0  # type: ignore[operator]
            stage.update(batch, parts)
            batches[mode] = batch
        got, want = batches["compiled"], batches["msgspec"]
        assert got.entity.tolist() == want.entity.tolist()  # type: ignore[union-attr]
        new = ALIVE - NEW_PER_BATCH if b == 0 else NEW_PER_BATCH
        assert got.new_entities == want.new_entities == new
        if b > 0:
            assert got.fallback_rows == 0  # new ids coded in the kernel
        vocab = stages["compiled"].decoder.entities
        assert vocab is not None
        other = stages["msgspec"].decoder.entities
        assert other is not None and list(vocab.codes.items()) == list(other.codes.items())
        for dev, code in zip(picks, want.entity.tolist(), strict=True):  # type: ignore[union-attr]
            assert code_of.setdefault(dev, code) == code, dev
            assert code < ALIVE + NEW_PER_BATCH  # codes are recycled: they stay small
        for dev in [d for d in code_of if d not in window]:
            del code_of[dev]  # evicted: its code may be reused
        for stage in stages.values():
            assert stage.tracked == len(window) - NEW_PER_BATCH * (b == 0)
            assert stage.rejected == 0
            names = stage.names()
            held = {
                names[c]
                for t in stage.tables.values()
                for c in t.code[: t.high_water][t.occupied].tolist()
            }
            assert held == (set(picks) if b == 0 else window)  # the evicted: the silent
            assert stage.decoder.entities is not None
            assert len(stage.decoder.entities.codes) - 1 == len(held)  # the rest released
    distinct = ALIVE - NEW_PER_BATCH + (BATCHES - 1) * NEW_PER_BATCH
    for mode, registry in registries.items():
        value = registry.get_sample_value
        labels = {"stream": "fleet"}
        assert value("driftwarden_fleet_evicted_devices_total", labels) == distinct - ALIVE
        assert value("driftwarden_fleet_rejected_events_total", labels) == 0
        stage = stages[mode]
        stage.evaluate(CLOCK)
        assert value("driftwarden_fleet_tracked_devices", labels) == ALIVE
        assert stage.evicted == distinct - ALIVE


def test_restored_devices_keep_their_state_and_the_ids_of_the_replaced_are_released() -> None:
    rng = np.random.default_rng(3)
    whole = _stage("compiled", CollectorRegistry())
    first = _stage("compiled", CollectorRegistry())
    for b in range(10):
        payloads, picks, _ = _batch(b, False, rng)
        parts = np.zeros(len(picks), dtype=np.int32)
        whole.update(whole.decoder.decode(payloads), parts)
        first.update(first.decoder.decode(payloads), parts)
    state = first.partition_state(0)
    assert state is not None
    # a restart: a new decoder and stage continue from the checkpoint
    second = _stage("compiled", CollectorRegistry())
    second.restore_partition(0, copy.deepcopy(state))
    assert second.decoder.entities is not None
    assert len(second.decoder.entities.codes) - 1 == ALIVE
    for b in range(10, 25):
        payloads, picks, _ = _batch(b, False, rng)
        parts = np.zeros(len(picks), dtype=np.int32)
        whole.update(whole.decoder.decode(payloads), parts)
        second.update(second.decoder.decode(payloads), parts)
        assert second.rejected == 0 and second.tracked == ALIVE

    def devices(stage: FleetStage) -> dict[Any, tuple[int, float]]:
        t = stage.tables[0]
        names = stage.names()
        return {
            names[int(t.code[s])]: (int(t.count[s]), float(t.last_time[s]))
            for s in np.flatnonzero(t.occupied).tolist()
        }

    assert devices(second) == devices(whole)
    # restoring over a table releases the ids only the replaced table held
    before = len(second.decoder.entities.codes) - 1
    second.restore_partition(0, copy.deepcopy(state))
    assert len(second.decoder.entities.codes) - 1 == before == ALIVE
    second.drop_partition(0)
    assert len(second.decoder.entities.codes) - 1 == 0
