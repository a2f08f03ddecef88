"""The stage and detector contracts: every registered stage and detector meets them."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from detectors.base import BinnedDetector, ChangeDetector
from detectors.baseline import QualityBaseline, build_categorical, build_numeric
from detectors.registry import create, names
from monitor.checkpoints import PartitionState, PlainStageState
from monitor.config.schema import parse_config
from monitor.dev.synthetic import DEMO_STREAM, generate_fleet
from monitor.errors import ConfigError
from monitor.pipeline.decode import StreamDecoder
from monitor.pipeline.drift import DriftStage
from monitor.pipeline.stage import STAGES, LegacyStage, Stage, stage_class, stages_for


def _spec() -> object:
    stream = copy.deepcopy(DEMO_STREAM) | {"baseline": {"first_events": 1000}}
    return parse_config(
        {"kafka": {"bootstrap.servers": "127.0.0.1:1"}, "streams": [stream]}, env={}
    ).streams[0]


@pytest.mark.parametrize("name", names())
def test_every_registered_detector_meets_one_contract(name: str) -> None:
    rng = np.random.default_rng(1)
    if name == "chi2":
        baseline: object = build_categorical(rng.choice(["a", "b", "c"], 1000), ["a", "b", "c"])
    elif name == "data_quality":
        baseline = QualityBaseline(np.array([9000, 1000, 0, 0, 0, 0]))
    else:
        baseline = build_numeric(rng.normal(0, 1, 1000))
    det = create(name, baseline=None if name == "adwin" else baseline, subject="x")
    kind = ChangeDetector if name == "adwin" else BinnedDetector
    assert isinstance(det, kind)


def test_every_registered_stage_is_a_stage() -> None:
    spec = _spec()
    for name in STAGES:
        stage = stage_class(name).for_stream(spec, StreamDecoder(spec))  # type: ignore[arg-type]
        assert stage is None or isinstance(stage, Stage)
    with pytest.raises(ConfigError, match="unknown stage"):
        stage_class("nope")


def test_drift_state_round_trips_through_its_plain_form() -> None:
    spec = _spec()
    (stage,) = stages_for(spec, StreamDecoder(spec))  # type: ignore[arg-type]
    assert isinstance(stage, DriftStage) and not stage.ready
    events = generate_fleet(3000, seed=2, bad_rate=0.0)
    batch = stage.decoder.decode(events.values)
    stage.update(batch, np.zeros(batch.n, dtype=np.int32))
    assert stage.ready
    state = stage.partition_state(0)
    assert state is not None
    plain = PartitionState(3000, (state,)).to_plain()
    back = PartitionState.from_plain(plain, (stage.decode_state,))
    assert back.stages[0] == stage.decode_state(state.to_plain())
    assert PartitionState.from_plain(plain).stages[0] == PlainStageState(state.to_plain())


class _Old:
    """A stage written to the earlier, untyped contract."""

    aggregating = True

    def __init__(self) -> None:
        self.saved: dict[int, dict[str, int]] = {}

    def update(self, batch: object, partitions: object) -> list[object]:
        return []

    def partition_state(self, slot: int) -> dict[str, int] | None:
        return self.saved.get(slot)

    def restore_partition(self, slot: int, state: dict[str, int]) -> None:
        self.saved[slot] = state

    def drop_partition(self, slot: int) -> None:
        self.saved.pop(slot, None)

    def set_remote(self, states: dict[int, dict[str, int]]) -> None:
        self.remote = states


def test_a_stage_of_the_earlier_contract_runs_through_the_adapter() -> None:
    old = _Old()
    stage = LegacyStage(old, "old")
    assert isinstance(stage, Stage)
    stage.judge = False
    assert old.aggregating is False
    stage.restore_partition(3, stage.decode_state({"n": 1}))
    assert stage.partition_state(3) == PlainStageState({"n": 1})
    stage.set_remote({4: PlainStageState({"n": 2})})
    assert old.remote == {4: {"n": 2}}
    assert stage.evaluate() == [] and stage.baseline_checkpoint() is None
