"""Golden-shape checks of the four webhook bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from monitor.alerting.engine import Alert, AlertEngine
from monitor.alerting.formats import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    deliveries_for,
    endpoints_from_config,
    render_alertmanager,
    render_pagerduty,
    render_slack,
    verify_signature,
)
from monitor.config.alerts import AlertsConfig

from .conftest import MakeFinding

CONFIG = AlertsConfig.model_validate(
    {
        "resolve_after": 1,
        "links": {"dashboard": "http://grafana.local/d/drift?var-stream={stream}"},
        "sinks": [
            {"type": "webhook", "url": "http://127.0.0.1:1/hook", "secret": "s3cret"},
            {"type": "slack", "url": "http://127.0.0.1:1/slack", "name": "ops-slack"},
            {"type": "pagerduty", "routing_key": "R0UTING", "url": "http://127.0.0.1:1/pd"},
            {"type": "alertmanager", "url": "http://127.0.0.1:1/", "hold": "1h"},
        ],
    }
)


@pytest.fixture
def pair(finding: MakeFinding) -> tuple[Alert, Alert]:
    engine = AlertEngine(CONFIG)
    (firing,) = engine.observe([finding(True, 999)], now=1_700_000_000.0).alerts
    (resolved,) = engine.observe([finding(False, 1999)], now=1_700_000_060.0).alerts
    return firing, resolved


def test_generic_alert_document(pair: tuple[Alert, Alert]) -> None:
    firing, resolved = pair
    doc = json.loads(firing.to_json())
    assert set(doc) == {
        "schema_version", "id", "status", "severity", "stream", "subject", "subjects",
        "detector", "kind", "summary", "evidence", "started_at", "ended_at", "links",
        "revision", "added_subjects",
    }  # fmt: skip
    assert doc["status"] == "firing"
    assert doc["ended_at"] is None
    # The event time at which the window first crossed: its latest event (1.7e9 + 999).
    assert doc["started_at"] == "2023-11-14T22:29:59.000Z"
    assert set(doc["evidence"]) == {
        "statistic", "threshold", "p_value", "window", "baseline_id", "top_subjects",
        "partitions", "statement", "top_categories", "unseen_rate", "details",
    }  # fmt: skip
    assert doc["evidence"]["statement"] == "ks statistic 0.3 >= threshold 0.1 (p=0.001)"
    assert doc["evidence"]["window"]["last_offset"] == 999
    assert doc["links"] == {"dashboard": "http://grafana.local/d/drift?var-stream=sensors"}
    done = json.loads(resolved.to_json())
    assert (done["id"], done["status"]) == (doc["id"], "resolved")
    assert done["ended_at"] == "2023-11-14T22:14:20.000Z"


def test_slack_shape(pair: tuple[Alert, Alert]) -> None:
    firing, resolved = pair
    msg = json.loads(render_slack(firing))
    assert set(msg) == {"text", "blocks"}
    assert "[WARNING]" in msg["text"]
    assert "sensors/temperature" in msg["text"]
    assert all(b["type"] in {"section", "context"} for b in msg["blocks"])
    assert "<http://grafana.local/d/drift?var-stream=sensors|dashboard>" in json.dumps(msg)
    assert "[RESOLVED]" in json.loads(render_slack(resolved))["text"]


def test_pagerduty_shape(pair: tuple[Alert, Alert]) -> None:
    firing, resolved = pair
    trig = json.loads(render_pagerduty(firing))
    assert trig["event_action"] == "trigger"
    assert trig["dedup_key"] == firing.id
    assert "routing_key" not in trig  # added at send time only
    assert set(trig["payload"]) >= {"summary", "severity", "source"}
    assert trig["payload"]["severity"] in {"critical", "error", "warning", "info"}
    res = json.loads(render_pagerduty(resolved))
    assert res == {"event_action": "resolve", "dedup_key": firing.id}


def test_alertmanager_shape(pair: tuple[Alert, Alert]) -> None:
    firing, resolved = pair
    (item,) = json.loads(render_alertmanager(firing, now=1_700_000_000.0, hold=3600.0))
    assert set(item) == {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
    assert item["labels"]["alertname"] == "DriftwardenDrift"
    assert item["labels"]["alert_id"] == firing.id
    assert item["endsAt"] == "2023-11-14T23:29:59.000Z"  # held open for an hour from its start
    assert item["generatorURL"].startswith("http://grafana.local/")
    (done,) = json.loads(render_alertmanager(resolved, now=1_700_000_060.0))
    assert done["endsAt"] == "2023-11-14T22:14:20.000Z"


def _finalized(alerts: list[Alert]) -> dict[str, list[tuple[bytes, dict[str, str]]]]:
    eps = {e.name: e for e in endpoints_from_config(CONFIG)}
    out: dict[str, list[tuple[bytes, dict[str, str]]]] = {}
    for d in deliveries_for(alerts, CONFIG, now=1_700_000_000.0):
        ep = eps[d.sink]
        body, headers = d.body, dict(d.headers)
        if ep.finalize is not None:
            body, fh = ep.finalize(body, headers, 1_700_000_001.0)
            headers = dict(fh)
        out.setdefault(d.sink, []).append((body, headers))
    return out


def test_deliveries_sign_and_inject_secrets_at_send_time(pair: tuple[Alert, Alert]) -> None:
    firing, _ = pair
    eps = {e.name: e for e in endpoints_from_config(CONFIG)}
    assert eps["alertmanager-3"].url == "http://127.0.0.1:1/api/v2/alerts"
    assert "s3cret" not in repr(eps)
    assert "R0UTING" not in repr(eps)
    deliveries = deliveries_for([firing], CONFIG, now=0.0)
    # pagerduty pages only on critical by default: a warning goes to three sinks
    assert sorted(d.sink for d in deliveries) == ["alertmanager-3", "ops-slack", "webhook-0"]
    for d in deliveries:
        assert b"s3cret" not in d.body
        assert "s3cret" not in repr(d)
    ((body, headers),) = _finalized([firing])["webhook-0"]
    sig, ts = headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER]
    assert verify_signature(b"s3cret", body, sig, ts, now=1700000001.0)
    # the timestamp is signed: moving it, or the body, breaks the signature
    assert not verify_signature(b"s3cret", body, sig, "1700000002", now=1700000001.0)
    assert not verify_signature(b"s3cret", body + b" ", sig, ts, now=1700000001.0)
    assert headers[TIMESTAMP_HEADER] == "1700000001"


def test_pagerduty_routing_key_injected(finding: MakeFinding) -> None:
    engine = AlertEngine(CONFIG.model_copy(update={"default_severity": "critical"}))
    (alert,) = engine.observe([finding(True)], now=0.0).alerts
    ((body, _),) = _finalized([alert])["pagerduty-2"]
    event: dict[str, Any] = json.loads(body)
    assert event["routing_key"] == "R0UTING"
    assert event["dedup_key"] == alert.id
