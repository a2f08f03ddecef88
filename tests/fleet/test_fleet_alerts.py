"""Entity findings through the alert engine: one grouped alert, per-device detail, resolve."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np

from monitor.alerting.engine import MAX_LISTED_ENTITIES, AlertEngine, to_out_messages
from monitor.config.alerts import AlertsConfig
from monitor.dev.fleet_demo import Failure, FleetChunk, FleetScenario
from tests.fleet.helpers import feed, fleet_spec, make_stage, to_batch

SCHEMA = Path(__file__).parents[2] / "deploy" / "schemas" / "alert.schema.json"


def test_500_devices_going_silent_together_make_one_alert_that_resolves() -> None:
    scenario = FleetScenario(
        devices=600, period=60.0, failures=(Failure("silent", tuple(range(500)), 3 * 3600.0),)
    )
    stage = make_stage(fleet_spec(evaluate_every="60s"), 600)
    config = AlertsConfig.model_validate({"topic": "alerts", "resolve_after": 3})
    engine = AlertEngine(config)
    alerts = []
    for chunk in scenario.chunks(0.0, 4 * 3600.0, 60.0):
        findings = stage.update(to_batch(chunk), (chunk.codes % 3).astype(np.int32))
        alerts += engine.observe(findings, now=float(chunk.times.max())).alerts
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.status == "firing" and alert.kind == "entity" and alert.detector == "silent"
    # the devices' silence limits pass within one period: the first evaluation opens
    # the group, the rest join it silently (no further pages)
    assert alert.subject == "*" and 3 <= len(alert.subjects) <= MAX_LISTED_ENTITIES
    assert alert.summary.startswith(f"silent on {len(alert.subjects)} devices of fleet")
    top = alert.evidence.top_subjects[0]
    details = dict(top.details)
    assert {"last_seen", "events", "interval", "value.f0", "run_length.f0"} <= set(details)
    doc = json.loads(alert.to_json())
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(doc)
    (message,) = to_out_messages(engine.observe([], 0.0), config) or [None]  # nothing new
    assert message is None
    assert to_out_messages(type(engine.observe([], 0.0))(alerts=(alert,)), config)[0].topic == (
        "alerts"
    )
    # the devices come back: one clean evaluation resolves the alert, same id
    t = scenario.start + 4 * 3600.0 + 10.0
    level = np.tile([20.0, 50.0, 100.0, 5.0, 10.0], (600, 1)) + scenario._offset
    back = FleetChunk(np.arange(600, dtype=np.int64), t + np.arange(600) * 0.01, level)
    findings = stage.update(to_batch(back), (back.codes % 3).astype(np.int32))
    later = FleetChunk(np.arange(600, dtype=np.int64), t + 70.0 + np.arange(600) * 0.01, level)
    findings += stage.update(to_batch(later), (later.codes % 3).astype(np.int32))
    resolved = engine.observe(findings, now=t + 100.0).alerts
    assert [(a.id, a.status) for a in resolved] == [(alert.id, "resolved")]
    assert resolved[0].summary == "silent on 500 devices of fleet (first 100 listed) resolved"
    assert len(resolved[0].subjects) == MAX_LISTED_ENTITIES
    assert engine.firing == 0


def test_fleet_findings_leave_no_per_device_metric_labels() -> None:
    from prometheus_client import CollectorRegistry

    from monitor.metrics import Metrics
    from monitor.pipeline.stream import record_findings

    scenario = FleetScenario(
        devices=50, period=60.0, failures=(Failure("silent", (1, 2), 2 * 3600.0),)
    )
    stage = make_stage(fleet_spec(evaluate_every="60s"), 50)
    findings = feed(stage, scenario, 0.0, 3 * 3600.0, chunk_seconds=60.0)
    assert {f.subject for f in findings if f.drift} == {"dev-00001", "dev-00002"}
    metrics = Metrics(CollectorRegistry())
    record_findings(metrics, findings)
    assert b"dev-0000" not in metrics.render()


def test_status_json_is_served_next_to_metrics() -> None:
    import urllib.request

    from prometheus_client import CollectorRegistry

    from monitor.metrics import Metrics, MetricsServer

    scenario = FleetScenario(devices=30, period=60.0, failures=(Failure("silent", (4,), 7200.0),))
    stage = make_stage(fleet_spec(evaluate_every="60s"), 30)
    stage.publish_status = True
    feed(stage, scenario, 0.0, 3 * 3600.0, chunk_seconds=300.0)
    assert stage.last_status is not None
    server = MetricsServer(
        Metrics(CollectorRegistry()),
        "127.0.0.1",
        0,
        pages={
            "/status.json": lambda: (
                json.dumps(stage.last_status.to_dict()).encode(),
                "application/json",
            )
        },
    ).start()
    try:
        host, port = server.address
        with urllib.request.urlopen(f"http://{host}:{port}/status.json", timeout=5) as resp:
            doc = json.loads(resp.read())
            assert resp.headers["Content-Type"] == "application/json"
    finally:
        server.stop()
    assert doc["unhealthy"]["silent"] == 1
    assert [d["entity"] for d in doc["worst"]["silent"]] == ["dev-00004"]
    assert doc["tracked"] == 30 and doc["healthy"] == 29
