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
    # one alert: the devices' silence limits pass within one period; the first
    # evaluation opens the group, the later ones add their devices as updates of it
    # (same id, one revision each, each device announced once), never a page per device
    assert len({a.id for a in alerts}) == 1
    assert [(a.status, a.revision) for a in alerts] == [("firing", i) for i in range(len(alerts))]
    alert = alerts[0]
    assert alert.status == "firing" and alert.kind == "entity" and alert.detector == "silent"
    assert alert.subject == "*" and 3 <= len(alert.subjects) <= MAX_LISTED_ENTITIES
    announced = list(alert.subjects) + [s for a in alerts[1:] for s in a.added_subjects]
    assert len(announced) == len(set(announced))
    assert set(announced) <= {f"dev-{i:05d}" for i in range(500)}
    assert all(a.added_subjects for a in alerts[1:])
    assert alert.summary.startswith(f"silent on {len(alert.subjects)} devices of fleet")
    top = alert.evidence.top_subjects[0]
    details = dict(top.details)
    assert {"last_seen", "events", "interval", "value.f0", "run_length.f0"} <= set(details)
    doc = json.loads(alert.to_json())
    jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(doc)
    for update in alerts[1:]:
        jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).validate(
            json.loads(update.to_json())
        )
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


def test_devices_joining_an_open_group_make_an_update_of_it() -> None:
    """More devices of a site go silent after the grouped alert fired: an update of
    the same alert (a revision, the added devices), like a field group's update."""
    site, later = tuple(range(40)), tuple(range(40, 60))
    scenario = FleetScenario(
        devices=300,
        period=60.0,
        failures=(Failure("silent", site, 3 * 3600.0), Failure("silent", later, 4 * 3600.0)),
    )
    stage = make_stage(fleet_spec(evaluate_every="60s"), 300)
    engine = AlertEngine(AlertsConfig.model_validate({"topic": "alerts"}))
    alerts = []
    for chunk in scenario.chunks(0.0, 5 * 3600.0, 60.0):
        findings = stage.update(to_batch(chunk), (chunk.codes % 3).astype(np.int32))
        alerts += engine.observe(findings, now=float(chunk.times.max())).alerts
    first = alerts[0]
    assert first.subject == "*" and first.revision == 0 and first.status == "firing"
    assert all((a.id, a.status) == (first.id, "firing") for a in alerts)
    assert [a.revision for a in alerts] == list(range(len(alerts)))
    names = {i: f"dev-{i:05d}" for i in range(60)}
    announced = list(first.subjects) + [s for a in alerts[1:] for s in a.added_subjects]
    assert sorted(announced) == sorted(names.values())  # each device once, no other
    joined_late = [a for a in alerts if set(a.added_subjects) & {names[i] for i in later}]
    assert joined_late and all(a.revision >= 1 for a in joined_late)
    assert set().union(*(a.added_subjects for a in joined_late)) == {names[i] for i in later}
    update = joined_late[0]
    assert f"{len(update.added_subjects)} joined: " in update.summary
    assert set(update.subjects) >= set(first.subjects) | set(update.added_subjects)
    schema = json.loads(SCHEMA.read_text())
    for a in alerts:
        jsonschema.Draft202012Validator(schema).validate(json.loads(a.to_json()))


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
