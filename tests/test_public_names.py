"""Each module's public names: ``__all__`` exists, names what the module defines or
re-exports, and, for the contracts between parts of the service, is pinned here so
a change to them is deliberate."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PACKAGES = ("connectors", "detectors", "monitor")

PINNED: dict[str, list[str]] = {
    "connectors.base": ["MemorySink", "MessageSink", "OutMessage"],
    "connectors.errors": ["ConfigError", "DriftwardenError", "InputFileError", "SinkError"],
    "connectors.kafka": [
        "RECORD_OVERHEAD_BYTES",
        "BrokerUnreachableError",
        "KafkaSink",
        "KafkaSource",
        "RateLimitFilter",
        "RawBatch",
        "TopicPartitionKey",
        "client_options",
        "consumer_limits",
        "ensure_topics",
        "librdkafka_logger",
        "producer_limits",
        "wait_for_cluster",
    ],
    "detectors.base": [
        "BinnedDetector",
        "ChangeDetector",
        "Detector",
        "DetectorError",
        "DetectorState",
        "Finding",
        "FloatArray",
        "IntArray",
        "Mergeable",
        "Verdicts",
        "WindowBounds",
        "WindowParams",
    ],
    "detectors.registry": ["create", "detector_class", "import_target", "names"],
    "monitor.runtime.assignment": ["Assignment", "kafka_sink", "kafka_source"],
    "monitor.runtime.checkpointer": ["Checkpointer", "judged_streams"],
    "monitor.checkpoints": [
        "AlertState",
        "BaselineCheckpoint",
        "CheckpointKey",
        "KeyKind",
        "PartitionCheckpoint",
        "PartitionState",
        "PlainStageState",
        "StageDecoder",
        "StageState",
        "StreamCheckpoint",
    ],
    "monitor.errors": ["ConfigError", "DriftwardenError", "InputFileError", "SinkError"],
    "monitor.pipeline.stream": [
        "BatchInput",
        "BatchResult",
        "DecodedInput",
        "OpenBatch",
        "StageOutcome",
        "StreamPipeline",
        "account_batch",
        "build_pipelines",
        "dead_letter",
        "output_topics",
        "record_findings",
        "record_verdicts",
        "unique_pipelines",
        "violations_dead_letter",
    ],
    "monitor.runtime.readiness": ["BROKER_DOWN", "Readiness"],
    "monitor.runtime.runner": ["BatchSource", "FindingsHandler", "RunStats", "Runner"],
    "monitor.pipeline.stage": [
        "STAGES",
        "Coordinates",
        "Linked",
        "ReferenceSource",
        "RunsApart",
        "SideTopics",
        "SlotArray",
        "Stage",
        "StageContext",
        "StageFactory",
        "Ticking",
        "Verdicting",
        "Violating",
        "registered_stages",
        "stage_class",
        "stages_for",
        "worker",
    ],
    "monitor.runtime.state": [
        "CHUNK_BYTES",
        "MemoryStateStore",
        "StateStore",
        "decode_state",
        "encode_state",
    ],
    "monitor.runtime.transaction": [
        "BatchSource",
        "BatchTransaction",
        "FindingsHandler",
        "OpenTransaction",
        "PreparedBatch",
        "RunStats",
        "flush_durably",
        "flush_quietly",
        "send_all",
    ],
    "monitor.runtime.service": ["Service"],
    "monitor.pipeline.drift_state": ["DriftState", "as_drift_state"],
    "monitor.pipeline.fleet": ["DeviceEvidence", "FleetStage", "FleetState", "FleetStatus"],
    "monitor.pipeline.model": [
        "DeployState",
        "ModelPartState",
        "ModelReference",
        "ModelStage",
        "RingState",
        "decode_model_state",
    ],
}


def _modules() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            if path.stem != "__init__":
                found.append(f"{package}.{path.stem}")
    return found


@pytest.mark.parametrize("module", _modules())
def test_every_module_declares_its_public_names(module: str) -> None:
    if module == "monitor.runtime.faust":
        pytest.importorskip("faust")
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    assert names is not None, f"{module} has no __all__"
    assert len(set(names)) == len(names), f"{module}.__all__ repeats a name"
    for name in names:
        assert not name.startswith("_"), f"{module}.__all__ exports private {name}"
        assert hasattr(mod, name), f"{module}.__all__ names missing {name}"


@pytest.mark.parametrize("module", sorted(PINNED))
def test_contract_modules_export_exactly_these_names(module: str) -> None:
    assert list(importlib.import_module(module).__all__) == PINNED[module]
