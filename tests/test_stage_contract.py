"""The stage and detector contracts: every registered stage and detector meets them."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from connectors.kafka import RawBatch
from detectors.base import BinnedDetector, ChangeDetector
from detectors.baseline import QualityBaseline, build_categorical, build_numeric
from detectors.registry import create, names
from monitor.checkpoints import PartitionState, PlainStageState
from monitor.config.schema import Config, parse_config
from monitor.dev.model_synthetic import MODEL_STREAM, generate_model_events, reference_rows
from monitor.dev.synthetic import DEMO_STREAM, generate_fleet
from monitor.errors import ConfigError
from monitor.metrics import Metrics
from monitor.pipeline.decode import StreamDecoder
from monitor.pipeline.drift import DriftStage
from monitor.pipeline.drift_state import DriftState
from monitor.pipeline.fleet import FleetStage, FleetState
from monitor.pipeline.model import DEPLOY_SLOT, DeployState, ModelPartState, ModelStage
from monitor.pipeline.stage import STAGES, Stage, stage_class, stages_for
from monitor.pipeline.stream import build_pipelines
from monitor.runtime.state import decode_state, encode_state


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


def _model_fleet_config(tmp_path: Path) -> Config:
    ref = tmp_path / "ref.jsonl"
    ref.write_bytes(b"\n".join(reference_rows(3000, seed=5)) + b"\n")
    stream = copy.deepcopy(MODEL_STREAM) | {
        "entity": "request_id",
        "fleet": {"max_future": "1000d"},
    }
    stream["model"]["reference"] = {"file": str(ref)}
    return parse_config(
        {"kafka": {"bootstrap.servers": "127.0.0.1:1"}, "streams": [stream]}, env={}
    )


def _raw(topic: str, values: list[bytes], start: int) -> RawBatch:
    n = len(values)
    return RawBatch(
        topic, values, np.zeros(n, np.int32), np.arange(start, start + n), [None] * n, [-1] * n
    )


def test_the_registry_builds_model_drift_and_fleet_in_order(tmp_path: Path) -> None:
    config = _model_fleet_config(tmp_path)
    spec = config.streams[0]
    stages = stages_for(spec, StreamDecoder(spec))
    assert [s.name for s in stages] == list(STAGES) == ["model", "drift", "fleet"]
    model, drift, fleet = stages
    assert isinstance(model, ModelStage) and isinstance(drift, DriftStage)
    assert isinstance(fleet, FleetStage) and all(isinstance(s, Stage) for s in stages)
    # the drift baseline is the model's reference file, linked for deployments
    assert model.drift is drift and drift.baseline is not None
    assert drift.baseline.id == model.references["*"].id
    assert drift.baseline_checkpoint() is None  # rebuilt from the file at every start


def test_typed_states_of_every_stage_round_trip_and_restore_exactly(tmp_path: Path) -> None:
    config = _model_fleet_config(tmp_path)
    events = generate_model_events(3000, seed=4)
    pipeline = build_pipelines(config, Metrics(CollectorRegistry()))["ml.loans.inference"]
    pipeline.process(_raw("ml.loans.inference", events.inference[:2000], 0))
    pipeline.process(_raw("ml.loans.labels", events.labels[:1000], 0))
    model, _, fleet = pipeline.stages
    assert isinstance(fleet, FleetStage) and fleet.tracked == 2000
    assert isinstance(model, ModelStage) and model.join_counts()["joined"] > 0
    state = pipeline.partition_state("ml.loans.inference", 0)
    assert [type(s) for s in state.stages] == [ModelPartState, DriftState, FleetState]
    plain = decode_state(encode_state(state.to_plain()))
    back = PartitionState.from_plain(plain, pipeline.state_decoders)
    assert [type(s) for s in back.stages] == [ModelPartState, DriftState, FleetState]
    deploy = model.partition_state(DEPLOY_SLOT)
    assert isinstance(deploy, DeployState)
    assert isinstance(model.decode_state(deploy.to_plain()), DeployState)

    restarted = build_pipelines(config, Metrics(CollectorRegistry()))["ml.loans.inference"]
    restarted.restore_partition("ml.loans.inference", 0, back)
    again = restarted.partition_state("ml.loans.inference", 0)
    assert encode_state(again.to_plain()) == encode_state(state.to_plain())
    # both continue alike
    for p in (pipeline, restarted):
        p.process(_raw("ml.loans.inference", events.inference[2000:], 2000))
        p.process(_raw("ml.loans.labels", events.labels[1000:], 1000))
    one, two = (p.partition_state("ml.loans.inference", 0) for p in (pipeline, restarted))
    assert encode_state(one.to_plain()) == encode_state(two.to_plain())


def test_a_checkpoint_of_another_stage_layout_does_not_crash_a_restore(tmp_path: Path) -> None:
    """A stream that gained a model and a fleet section: the old checkpoint's drift state
    sits where the model's is now; every stage restores what fits and starts the rest."""
    config = _model_fleet_config(tmp_path)
    pipeline = build_pipelines(config, Metrics(CollectorRegistry()))["ml.loans.inference"]
    old = PartitionState(5, (PlainStageState({"binned": {}, "raw": {}}), None, None))
    plain = decode_state(encode_state(old.to_plain()))
    typed = PartitionState.from_plain(plain, pipeline.state_decoders)
    assert isinstance(typed.stages[0], PlainStageState)
    pipeline.restore_partition("ml.loans.inference", 0, typed)
    fleet_plain = {"version": 99, "table": {}}
    (_, _, fleet) = pipeline.stages
    assert isinstance(fleet.decode_state(fleet_plain), PlainStageState)
    fleet.restore_partition(0, fleet.decode_state(fleet_plain))
    assert pipeline.partition_state("ml.loans.inference", 0).events == 5


def test_a_stream_that_gains_stages_keeps_the_drift_state_by_name(tmp_path: Path) -> None:
    """Checkpoints name each stage's state: a drift-only stream's checkpoint restores
    into the drift stage of the same stream once it has a model and a fleet (which
    start afresh), exactly."""
    from detectors.baseline import save_baseline
    from monitor.pipeline.stage import ReferenceSource

    events = generate_model_events(3000, seed=9)
    full = _model_fleet_config(tmp_path)
    after = build_pipelines(full, Metrics(CollectorRegistry()))["ml.loans.inference"]
    model = after.stages[0]
    assert isinstance(model, ReferenceSource)
    reference = model.drift_reference()  # the same baseline, as a file, for drift alone
    assert reference is not None
    save_baseline(reference, tmp_path / "baseline.json")
    spec = copy.deepcopy(MODEL_STREAM) | {"entity": "request_id"}
    spec["baseline"] = {"file": str(tmp_path / "baseline.json")}
    del spec["model"]
    drift_only = parse_config(
        {"kafka": {"bootstrap.servers": "127.0.0.1:1"}, "streams": [spec]}, env={}
    )
    before = build_pipelines(drift_only, Metrics(CollectorRegistry()))["ml.loans.inference"]
    assert before.stage_names == ("drift",)
    before.process(_raw("ml.loans.inference", events.inference[:2000], 0))
    saved = before.partition_state("ml.loans.inference", 0)
    assert saved.to_plain()["names"] == ["drift"] and saved.stages[0] is not None
    assert after.stage_names == ("model", "drift", "fleet")
    typed = PartitionState.from_plain(
        decode_state(encode_state(saved.to_plain())), after.state_decoders
    )
    assert typed.by_name().keys() == {"drift"}
    after.restore_partition("ml.loans.inference", 0, typed)
    restored = after.partition_state("ml.loans.inference", 0).by_name()
    one, two = restored["drift"], saved.by_name()["drift"]
    assert one is not None and two is not None
    assert encode_state(one.to_plain()) == encode_state(two.to_plain())
    assert restored["model"] is None and restored["fleet"] is None  # they start afresh
