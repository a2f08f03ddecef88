"""Retrain requests from model alerts: which causes count, evidence, cooldown, ids."""

from __future__ import annotations

from detectors.base import Finding, WindowBounds
from monitor.alerting.engine import AlertEngine
from monitor.config.alerts import AlertsConfig


def _f(detector: str, subject: str, kind: str, drift: bool = True) -> Finding:
    return Finding(
        detector, subject, 0.3, 0.1, drift, 1e-6, kind=kind, stream="loans-model",
        window=WindowBounds(events=4000), baseline_id="ref-1",
    )  # fmt: skip


def _engine() -> AlertEngine:
    engine = AlertEngine(
        AlertsConfig(resolve_after=1), retrain_models={"loans-model": ("loans", "1")}
    )
    engine.retrain_on = {"loans-model": (("realized",), None)}
    return engine


def test_only_the_configured_causes_ask_for_a_retrain() -> None:
    engine = _engine()
    out = engine.observe([_f("psi", "x1", "field"), _f("ks", "x2", "field")], now=0.0)
    assert len(out.alerts) == 2 and not out.retrain_requests  # input drift: alert only
    out = engine.observe([_f("cbpe", "loans@1:accuracy", "model")], now=1.0)
    assert len(out.alerts) == 1 and not out.retrain_requests  # estimate: alert only
    out = engine.observe([_f("quality", "loans@1:accuracy", "model")], now=2.0)
    (request,) = out.retrain_requests
    assert request.evidence is not None
    assert (request.evidence.metric, request.evidence.estimate) == ("accuracy", False)
    # no ranking finding yet: the open field incidents, strongest first
    assert {f.subject for f in request.evidence.features} == {"x1", "x2"}
    assert request.evidence.reference_id == "ref-1"


def test_deterministic_id_and_cooldown() -> None:
    a, b = _engine(), _engine()
    finding = _f("quality", "loans@1:accuracy", "model")
    (ra,) = a.observe([finding], now=0.0).retrain_requests
    (rb,) = b.observe([finding], now=50.0).retrain_requests
    assert ra.trigger_id == rb.trigger_id
    a.observe([_f("quality", "loans@1:accuracy", "model", drift=False)], now=10.0)
    # a new episode within the retrain cooldown (6 h by default) asks for nothing
    out = a.observe([_f("quality", "loans@1:accuracy", "model")], now=5000.0)
    assert not out.retrain_requests
