"""Alerts end to end: the real broker, the real Service, real HTTP receivers.

One partition, so offsets are the global event order; a source batch of at most one
detector step (1,000 events), so every ``observe`` call sees at most one finding per
(field, detector) and the episodes (``resolve_after`` counts calls) do not depend on
poll timing. The Prometheus test uses a copy of the shipped rules with ``for: 0s``
and a 1 s evaluation interval (the shipped ``for: 5m`` would take minutes).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from prometheus_client import CollectorRegistry

from monitor.alerting.engine import alert_id_for
from monitor.alerting.formats import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from monitor.config.schema import parse_config
from monitor.dev.synthetic import DEMO_STREAM, FleetEvents, generate_fleet
from monitor.runtime.service import Service
from tests.alerts_utils import (
    SCHEMAS,
    Receiver,
    free_port,
    metric_by_label,
    metric_total,
    prom_query,
    prometheus_stack,
    receiver,
)
from tests.kafka_utils import create_topics, produce, read_topic

pytestmark = pytest.mark.integration

TOTAL, BASELINE, DRIFT_AT, DRIFT_UNTIL = 80_000, 15_000, 30_000, 50_000
WINDOW, STEP = 5_000, 1_000
MODEL, VERSION = "sensor-anomaly", "3"
SECRET = "e2e-s3cret"
DRIFTED, UNDRIFTED = {"vibration", "status"}, {"temperature", "humidity"}
RANK = {"info": 0, "warning": 1, "critical": 2}

ALERT_SCHEMA = json.loads((SCHEMAS / "alert.schema.json").read_text())
RETRAIN_SCHEMA = json.loads((SCHEMAS / "retrain-request.schema.json").read_text())

Pair = tuple[str, str]  # (alert id, status)


@pytest.fixture(scope="module")
def fleet() -> FleetEvents:
    """80k events: drift on vibration and status from event 30k to 50k, then recovery."""
    return generate_fleet(TOTAL, seed=9, bad_rate=0.01, drift_at=DRIFT_AT, drift_until=DRIFT_UNTIL)


def _sinks(base: str) -> list[dict[str, Any]]:
    return [
        {"type": "webhook", "name": "hook", "url": f"{base}/hook", "secret": SECRET, "timeout": 2},
        {"type": "slack", "name": "slack", "url": f"{base}/slack", "timeout": 2},
        {
            "type": "pagerduty",
            "name": "pd",
            "url": f"{base}/pd",
            "routing_key": "R0UTE",
            "min_severity": "warning",  # receives everything but the ADWIN (info) alerts
            "timeout": 2,
        },
        {"type": "alertmanager", "name": "am", "url": f"{base}/am", "timeout": 2},
    ]


PATHS = {"hook": "/hook", "slack": "/slack", "pd": "/pd", "am": "/am/api/v2/alerts"}


def _config(
    bootstrap: str,
    topic: str,
    name: str,
    sinks: list[dict[str, Any]],
    *,
    metrics: str = "127.0.0.1:0",
    **alerts: Any,
) -> Any:
    stream = copy.deepcopy(DEMO_STREAM) | {
        "topic": topic,
        "baseline": {"first_events": BASELINE},
        "window": {"events": WINDOW, "step": STEP},
        "model": {"name": MODEL, "version": VERSION},
    }
    raw = {
        "kafka": {"bootstrap.servers": bootstrap, "session.timeout.ms": 6000},
        "group": f"dw-{name}",
        "metrics": {"listen": metrics},
        "dead_letter_topic": f"dlq.{name}",
        "source": {"max_batch_events": STEP, "max_wait": "200ms"},
        "streams": [stream],
        "alerts": {
            "topic": f"alerts.{name}",
            "retrain_topic": f"retrain.{name}",
            "resolve_after": 3,
            "severities": {"adwin": "info"},
            "sinks": sinks,
            **alerts,
        },
    }
    return parse_config(raw, env={})


def _produce(bootstrap: str, topic: str, fleet: FleetEvents) -> None:
    create_topics(bootstrap, {topic: 1})  # one partition: offsets are the global order
    assert produce(bootstrap, topic, fleet.values, fleet.keys) == {0: TOTAL}


def _read_json(bootstrap: str, topic: str, expected: int) -> list[tuple[dict[str, Any], Any]]:
    msgs = read_topic(bootstrap, topic, expected, timeout=20, settle=0.5)
    out = []
    for m in sorted(msgs, key=lambda m: m.offset()):
        value = m.value()
        assert value is not None
        out.append((json.loads(value), dict(m.headers() or [])))
    return out


def _read_outputs(
    bootstrap: str, name: str, registry: CollectorRegistry
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The alerts and retrain requests the service says it emitted, read back and checked."""
    n_alerts = int(metric_total(registry, "driftwarden_alerts_total"))
    n_retrain = int(metric_total(registry, "driftwarden_retrain_requests_total"))
    alerts = _read_json(bootstrap, f"alerts.{name}", n_alerts)
    retrains = _read_json(bootstrap, f"retrain.{name}", n_retrain)
    assert len(alerts) == n_alerts and len(retrains) == n_retrain
    for doc, headers in alerts:
        jsonschema.validate(doc, ALERT_SCHEMA)
        assert headers["driftwarden-status"] == doc["status"].encode()
        assert headers["driftwarden-severity"] == doc["severity"].encode()
    for doc, headers in retrains:
        jsonschema.validate(doc, RETRAIN_SCHEMA)
        assert headers["driftwarden-trigger-id"] == doc["trigger_id"].encode()
    return [d for d, _ in alerts], [d for d, _ in retrains]


def _check_lifecycle(alerts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """One firing then one resolved per id, on the drifted fields only.

    Returns the firing document of each id."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for a in alerts:
        by_id.setdefault(a["id"], []).append(a)
    firing = {}
    for alert_id, docs in by_id.items():
        assert [d["status"] for d in docs] == ["firing", "resolved"], (alert_id, docs)
        fire, res = docs
        assert res["ended_at"] is not None and res["ended_at"] >= res["started_at"]
        assert res["started_at"] == fire["started_at"]
        assert (res["subject"], res["detector"]) == (fire["subject"], fire["detector"])
        firing[alert_id] = fire
    subjects = {(f["subject"], f["detector"]) for f in firing.values()}
    assert {("vibration", "ks"), ("status", "chi2")} <= subjects, subjects
    assert not {s for s, _ in subjects} & UNDRIFTED, subjects
    assert {s for s, _ in subjects} <= DRIFTED
    assert len(subjects) == len(firing)  # one episode per (field, detector)
    return firing


def _check_anchors(alerts: list[dict[str, Any]]) -> None:
    """Each id hashes its episode's number per (stream, subject, detector): here the first."""
    for a in alerts:
        assert a["id"] == alert_id_for("sensors", a["subject"], a["detector"], "e1"), a


def _pairs(alerts: list[dict[str, Any]]) -> list[Pair]:
    return [(a["id"], a["status"]) for a in alerts]


def _received(rx: Receiver) -> dict[str, list[Pair]]:
    """(id, status) per sink, in arrival order, decoded from each format."""
    out: dict[str, list[Pair]] = {}
    hooks = rx.at(PATHS["hook"])
    for r in hooks:
        signature, timestamp = r.headers[SIGNATURE_HEADER], r.headers[TIMESTAMP_HEADER]
        assert verify_signature(SECRET.encode(), r.body, signature, timestamp, now=time.time())
    out["hook"] = [(b["id"], b["status"]) for b in (r.json() for r in hooks)]
    actions = {"trigger": "firing", "resolve": "resolved"}
    pds = rx.bodies(PATHS["pd"])
    assert all(e["routing_key"] == "R0UTE" for e in pds)
    out["pd"] = [(e["dedup_key"], actions[e["event_action"]]) for e in pds]
    am = []
    for r in rx.at(PATHS["am"]):
        (item,) = r.json()
        ends = datetime.fromisoformat(item["endsAt"]).timestamp()
        # firing: endsAt = now + hold (1 day); resolved: the real end, in the past
        am.append((item["labels"]["alert_id"], "firing" if ends > r.at + 3600 else "resolved"))
    out["am"] = am
    slack = []
    for msg in rx.bodies(PATHS["slack"]):
        context = msg["blocks"][-1]["elements"][0]["text"]
        (alert_id,) = re.findall(r"alert `([0-9a-f]{32})`", context)
        slack.append((alert_id, "resolved" if "[RESOLVED]" in msg["text"] else "firing"))
    out["slack"] = slack
    return out


def _check_webhooks(rx: Receiver, alerts: list[dict[str, Any]]) -> dict[str, list[Pair]]:
    """Each sink got every (id, status) it should exactly once, firing before resolved."""
    expected = {
        "hook": _pairs(alerts),
        "slack": _pairs(alerts),
        "am": _pairs(alerts),
        "pd": [(a["id"], a["status"]) for a in alerts if RANK[a["severity"]] >= RANK["warning"]],
    }
    got = _received(rx)
    for sink, pairs in got.items():
        dupes = [p for p, n in Counter(pairs).items() if n > 1]
        assert not dupes, (sink, dupes)
        assert set(pairs) == set(expected[sink]), (sink, set(pairs) ^ set(expected[sink]))
        for alert_id, status in pairs:
            if status == "resolved":
                assert pairs.index((alert_id, "firing")) < pairs.index((alert_id, status))
    assert len(got["slack"]) == len(alerts)
    assert got["pd"] and len(got["pd"]) < len(alerts)  # ADWIN alerts (info) filtered out
    return got


def _check_retrain(retrains: list[dict[str, Any]], firing: dict[str, dict[str, Any]]) -> None:
    assert retrains, "no retrain request"
    for r in retrains:
        assert (r["model"], r["version"], r["stream"]) == (MODEL, VERSION, "sensors")
        assert r["alert_ids"] == sorted(r["alert_ids"])
        for alert_id in r["alert_ids"]:
            assert RANK[firing[alert_id]["severity"]] >= RANK["warning"]
        raw = "\x1f".join(("driftwarden.retrain", MODEL, VERSION, *r["alert_ids"]))
        assert r["trigger_id"] == hashlib.sha256(raw.encode()).hexdigest()[:32]


def _dispatcher(service: Service) -> Any:
    handler = service.runner.findings_handler
    assert handler is not None
    return handler.dispatcher  # type: ignore[attr-defined]


def test_one_firing_and_one_resolved_per_episode_everywhere(
    kafka_bootstrap: str, unique: str, fleet: FleetEvents
) -> None:
    topic = f"iot.{unique}"
    _produce(kafka_bootstrap, topic, fleet)
    with receiver() as rx:
        registry = CollectorRegistry()
        config = _config(kafka_bootstrap, topic, unique, _sinks(rx.url))
        service = Service(config, registry=registry)
        dispatcher = _dispatcher(service)
        t0 = time.monotonic()
        stats = service.run(
            max_seconds=120,
            until=lambda s: s.events >= TOTAL and dispatcher.pending() == 0,
        )
        took = time.monotonic() - t0
        assert stats.events == TOTAL and dispatcher.pending() == 0
        alerts, retrains = _read_outputs(kafka_bootstrap, unique, registry)
        firing = _check_lifecycle(alerts)
        got = _check_webhooks(rx, alerts)
        _check_retrain(retrains, firing)
        sent = metric_by_label(registry, "driftwarden_sink_sent_total", "sink")
        assert sent == {sink: float(len(pairs)) for sink, pairs in got.items()}
        assert metric_total(registry, "driftwarden_sink_failed_total") == 0

    print(
        f"\n{len(firing)} episodes, {len(retrains)} retrain request(s); "
        f"run {took:.1f}s; deliveries {dict(sorted(sent.items()))}"
    )


def _run_to_end(bootstrap: str, topic: str, name: str) -> list[dict[str, Any]]:
    registry = CollectorRegistry()
    service = Service(_config(bootstrap, topic, name, []), registry=registry)
    assert service.run(max_seconds=120, until=lambda s: s.events >= TOTAL).events == TOTAL
    alerts, retrains = _read_outputs(bootstrap, name, registry)
    _check_lifecycle(alerts)
    _check_retrain(retrains, {a["id"]: a for a in alerts if a["status"] == "firing"})
    return alerts + retrains


def test_alert_ids_are_deterministic(kafka_bootstrap: str, unique: str, fleet: FleetEvents) -> None:
    """Two services (separate groups) over the same events emit the same alert ids and
    retrain trigger ids, whatever the wall clock; each id hashes the episode's number."""
    topic = f"iot.{unique}"
    _produce(kafka_bootstrap, topic, fleet)
    first = _run_to_end(kafka_bootstrap, topic, f"{unique}-a")
    time.sleep(1.1)  # a later wall clock: ids must not depend on it
    second = _run_to_end(kafka_bootstrap, topic, f"{unique}-b")
    ids = [(d.get("id"), d.get("status"), d.get("trigger_id")) for d in first]
    assert ids == [(d.get("id"), d.get("status"), d.get("trigger_id")) for d in second]
    _check_anchors([d for d in first if "status" in d])
    print(f"\n{len(ids)} alert/retrain messages identical across two runs")


def test_webhook_down_for_60_seconds(kafka_bootstrap: str, unique: str, fleet: FleetEvents) -> None:
    outage = 60.0
    topic = f"iot.{unique}"
    _produce(kafka_bootstrap, topic, fleet)
    with receiver() as rx:
        registry = CollectorRegistry()
        config = _config(
            kafka_bootstrap,
            topic,
            unique,
            _sinks(rx.url),
            delivery={"backoff_initial": "1s", "backoff_max": "5s"},
        )
        service = Service(config, registry=registry)
        dispatcher = _dispatcher(service)
        abort = threading.Event()
        during: dict[str, Any] = {}
        times: dict[str, float] = {}

        def outage_then_recovery() -> None:
            if abort.wait(outage):
                return
            during["failed"] = metric_by_label(registry, "driftwarden_sink_failed_total", "sink")
            during["sent"] = metric_by_label(registry, "driftwarden_sink_sent_total", "sink")
            during["alerts"] = metric_total(registry, "driftwarden_alerts_total")
            during["pending"] = dispatcher.pending()
            during["events"] = service.runner.stats.events
            times["up_wall"] = time.time()
            rx.up()
            times["up"] = time.monotonic()

        def settled(stats: Any) -> bool:
            if stats.events >= TOTAL and "consumed" not in times:
                times["consumed"] = time.monotonic()
            if rx.is_up and "up" in times and stats.events >= TOTAL and not dispatcher.pending():
                times["settled"] = time.monotonic()
                return True
            return False

        rx.down()  # before the service starts, so before any drift is seen
        times["down"] = time.monotonic()
        flipper = threading.Thread(target=outage_then_recovery, name="outage")
        flipper.start()
        try:
            stats = service.run(max_seconds=outage + 60, until=settled)
        finally:
            abort.set()
            flipper.join(10)
        assert "up" in times, "the receiver never came back"
        assert "settled" in times, f"deliveries did not settle: {dispatcher.pending()} pending"
        assert stats.events == TOTAL

        # Alerts fired (and resolved) while the webhook was down; nothing got through.
        alerts, retrains = _read_outputs(kafka_bootstrap, unique, registry)
        assert during["events"] == TOTAL and during["alerts"] == len(alerts) > 0
        assert during["sent"] == {}
        assert set(during["failed"]) == set(PATHS), during["failed"]
        assert all(n > 0 for n in during["failed"].values())
        assert during["pending"] == len(alerts) * 3 + sum(
            RANK[a["severity"]] >= RANK["warning"] for a in alerts
        )
        assert min(r.at for r in rx.requests) >= times["up_wall"]

        firing = _check_lifecycle(alerts)
        got = _check_webhooks(rx, alerts)
        _check_retrain(retrains, firing)
        sent = metric_by_label(registry, "driftwarden_sink_sent_total", "sink")
        assert sent == {sink: float(len(pairs)) for sink, pairs in got.items()}
        assert metric_total(registry, "driftwarden_sink_dropped_total") == 0
        recovery = times["settled"] - times["up"]
        assert recovery < 20, f"{recovery:.1f}s from recovery to all deliveries (backoff_max 5s)"
    print(
        f"\nconsumed {times['consumed'] - times['down']:.1f}s into the outage; "
        f"{len(alerts)} alert messages, {sum(sent.values()):.0f} deliveries; "
        f"failed attempts during the outage {dict(sorted(during['failed'].items()))}; "
        f"webhook back -> all delivered in {recovery:.1f}s"
    )


def _notified(rx: Receiver, alertname: str, status: str = "firing") -> list[dict[str, Any]]:
    return [
        a
        for payload in rx.bodies("/alerts")
        for a in payload["alerts"]
        if a["labels"].get("alertname") == alertname and a["status"] == status
    ]


def test_real_prometheus_scrapes_the_service(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    """Prometheus (the shipped rules with ``for: 0s``, 1 s scrape and evaluation) scrapes
    the running service; Alertmanager routes both the rule's alert and the service's own
    alertmanager-sink alert to the receiver."""
    total = 50_000
    events = generate_fleet(total, seed=9, bad_rate=0.01, drift_at=DRIFT_AT)  # no recovery
    topic = f"iot.{unique}"
    create_topics(kafka_bootstrap, {topic: 1})
    produce(kafka_bootstrap, topic, events.values, events.keys)
    am_port = free_port()
    with receiver() as rx:
        registry = CollectorRegistry()
        sinks = [{"type": "alertmanager", "name": "am", "url": f"http://127.0.0.1:{am_port}"}]
        service = Service(_config(kafka_bootstrap, topic, unique, sinks), registry=registry)
        host, port = service.metrics_address or ("", 0)
        with prometheus_stack(tmp_path, f"{host}:{port}", f"{rx.url}/alerts", am_port) as stack:
            prom = stack["prom"]
            t0 = time.monotonic()
            runner = threading.Thread(target=service.run, kwargs={"max_seconds": 150})
            runner.start()
            try:
                deadline = time.monotonic() + 90
                seen: dict[str, float] = {}
                while time.monotonic() < deadline and len(seen) < 4:
                    now = time.monotonic() - t0
                    events_total = prom_query(
                        prom, 'sum(driftwarden_events_total{stream="sensors"})'
                    )
                    if events_total and float(events_total[0]["value"][1]) == total:
                        seen.setdefault("events", now)
                    if prom_query(
                        prom, 'driftwarden_drift_detected{field="vibration",detector="ks"} == 1'
                    ):
                        seen.setdefault("drift", now)
                    if _notified(rx, "DriftwardenDriftDetected"):
                        seen.setdefault("rule_alert", now)
                    if _notified(rx, "DriftwardenDrift"):
                        seen.setdefault("own_alert", now)
                    time.sleep(0.5)
                undrifted = prom_query(
                    prom, 'driftwarden_drift_detected{field=~"temperature|humidity"} == 1'
                )
            finally:
                service.stop()
                runner.join(30)
        assert not runner.is_alive()
        assert set(seen) == {"events", "drift", "rule_alert", "own_alert"}, seen
        assert undrifted == [], undrifted
        rule_alerts = _notified(rx, "DriftwardenDriftDetected")
        assert {a["labels"]["field"] for a in rule_alerts} <= DRIFTED
        assert ("vibration", "ks") in {
            (a["labels"]["field"], a["labels"]["detector"]) for a in rule_alerts
        }
        assert all(a["labels"]["severity"] == "warning" for a in rule_alerts)
        alerts, _ = _read_outputs(kafka_bootstrap, unique, registry)
        own_ids = {a["labels"]["alert_id"] for a in _notified(rx, "DriftwardenDrift")}
        assert own_ids and own_ids <= {a["id"] for a in alerts if a["status"] == "firing"}
    print(
        "\nseconds from service start: "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(seen.items(), key=lambda kv: kv[1]))
    )
