"""The example retrain consumer handles each trigger id once, across restarts."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from monitor.alerting.engine import AlertEngine
from monitor.config.alerts import AlertsConfig

from .conftest import MakeFinding

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy/examples/retrain_consumer.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("retrain_consumer_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class FakeMessage:
    payload: bytes | None

    def value(self) -> bytes | None:
        return self.payload

    def topic(self) -> str:
        return "ml.retrain"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0


def test_idempotent_by_trigger_id(
    example: ModuleType, finding: MakeFinding, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = AlertEngine(AlertsConfig(), retrain_models={"sensors": ("m", "1")})
    (request,) = engine.observe([finding(True)], now=0.0).retrain_requests
    msg = FakeMessage(request.to_json())
    seen = example.SeenTriggers(tmp_path / "seen.json")
    assert example.process(msg, seen) == "handled"
    assert example.process(msg, seen) == "duplicate"
    restarted = example.SeenTriggers(tmp_path / "seen.json")
    assert example.process(msg, restarted) == "duplicate"
    assert example.process(FakeMessage(b"{}"), restarted) == "invalid"
    assert example.process(FakeMessage(None), restarted) == "invalid"
    out = capsys.readouterr().out
    assert out.count("retrain m@1") == 1
    assert json.loads((tmp_path / "seen.json").read_text()) == [request.trigger_id]


def test_model_retrain_request_carries_evidence_and_is_acknowledged(
    example: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from detectors.base import Finding, WindowBounds

    engine = AlertEngine(AlertsConfig(), retrain_models={"loans-model": ("loans", "1")})
    ranking = Finding(
        "feature_drift", "loans@2:features", 2.0, 1.0, False, kind="model",
        stream="loans-model", details=(("x1", 4.0), ("x2", 2.5)),
    )  # fmt: skip
    drop = Finding(
        "cbpe", "loans@2:accuracy", 0.08, 0.02, True, 1e-9, kind="model",
        stream="loans-model", window=WindowBounds(events=4000), baseline_id="ref-1",
    )  # fmt: skip
    (request,) = engine.observe([ranking, drop], now=0.0).retrain_requests
    assert (request.model, request.version) == ("loans", "2")
    assert request.evidence is not None and request.evidence.estimate
    assert [f.subject for f in request.evidence.features] == ["x1", "x2"]
    acks: list[tuple[str, bytes]] = []
    seen = example.SeenTriggers(None)
    msg = FakeMessage(request.to_json())
    assert example.process(msg, seen, lambda k, v: acks.append((k, v))) == "handled"
    assert example.process(msg, seen, lambda k, v: acks.append((k, v))) == "duplicate"
    assert [json.loads(v)["status"] for _, v in acks] == ["accepted"]
    out = capsys.readouterr().out
    assert "evidence: estimated accuracy over 4000 events vs reference ref-1" in out
    assert "features by drift: x1, x2" in out
