"""The alert lifecycle: episodes, resolve, cooldown, grouping, ids, retrain, state."""

from __future__ import annotations

import json

import pytest

from connectors.base import MemorySink
from monitor.alerting.engine import AlertEngine, to_out_messages
from monitor.config.alerts import AlertsConfig, load_alerts_config
from monitor.errors import ConfigError

from .conftest import MakeFinding


def cfg(**kw: object) -> AlertsConfig:
    base: dict[str, object] = {"resolve_after": 2, "cooldown": "10m"}
    base.update(kw)
    return AlertsConfig.model_validate(base)


def test_one_firing_per_episode_then_resolved(finding: MakeFinding) -> None:
    engine = AlertEngine(cfg())
    out = engine.observe([finding(True, 999)], now=100.0)
    assert [a.status for a in out.alerts] == ["firing"]
    fired = out.alerts[0]
    for i in range(2, 6):  # drift persists: nothing new
        assert engine.observe([finding(True, i * 1000 - 1)], now=100.0 + i).alerts == ()
    assert engine.observe([finding(False, 6999)], now=110.0).alerts == ()
    assert engine.observe([finding(True, 7999)], now=111.0).alerts == ()  # resets the count
    assert engine.observe([finding(False, 8999)], now=112.0).alerts == ()
    (resolved,) = engine.observe([finding(False, 9999)], now=113.0).alerts
    assert resolved.status == "resolved"
    assert resolved.id == fired.id
    assert resolved.started_at == 1.7e9 + 999  # the event time the window first crossed at
    assert resolved.ended_at == 113.0
    assert engine.firing == 0


def test_clean_findings_alone_do_nothing(finding: MakeFinding) -> None:
    engine = AlertEngine(cfg())
    assert not engine.observe([finding(False, 999 + i) for i in range(5)], now=1.0)


def test_cooldown_suppresses_a_new_episode(finding: MakeFinding) -> None:
    engine = AlertEngine(cfg(cooldown="10m"))
    first = engine.observe([finding(True, 999)], now=0.0).alerts[0]
    engine.observe([finding(False, 1999)], now=10.0)
    assert engine.observe([finding(False, 2999)], now=20.0).alerts[0].status == "resolved"
    out = engine.observe([finding(True, 3999)], now=20.0 + 599.0)
    assert out.alerts == ()
    assert out.suppressed == 1
    (again,) = engine.observe([finding(True, 4999)], now=20.0 + 600.0).alerts
    assert again.status == "firing"
    assert again.id != first.id


def test_severity_from_detector_kind_route_and_default(finding: MakeFinding) -> None:
    config = cfg(
        severities={"adwin": "info", "entity": "critical"},
        routes=[{"stream": "pay*", "subject": "amount", "severity": "critical"}],
    )
    engine = AlertEngine(config)
    out = engine.observe(
        [
            finding(True, detector="adwin"),
            finding(True, detector="ks"),
            finding(True, stream="payments", subject="amount"),
            finding(True, subject="dev-7", kind="entity", detector="rate"),
        ],
        now=0.0,
    )
    got = {(a.stream, a.subject, a.detector): a.severity for a in out.alerts}
    assert got == {
        ("sensors", "temperature", "adwin"): "info",
        ("sensors", "temperature", "ks"): "warning",
        ("payments", "amount", "ks"): "critical",
        ("sensors", "dev-7", "rate"): "critical",
    }


def test_grouping_many_subjects_one_alert(finding: MakeFinding) -> None:
    engine = AlertEngine(cfg(grouping={"min_subjects": 3, "top": 2}))
    subjects = {"a": 0.5, "b": 0.9, "c": 0.2, "d": 0.7}
    out = engine.observe(
        [finding(True, subject=s, statistic=v) for s, v in subjects.items()], now=0.0
    )
    (group,) = out.alerts
    assert group.subject == "*"
    assert group.subjects == ("a", "b", "c", "d")
    assert [s.subject for s in group.evidence.top_subjects] == ["b", "d"]
    assert group.evidence.statistic == 0.9
    assert "4 subjects of sensors" in group.summary
    # a latecomer joins with an update of the group's alert (same id, listing it);
    # the group resolves when its last member resolves
    (update,) = engine.observe([finding(True, subject="e", statistic=0.95)], now=1.0).alerts
    assert (update.id, update.status, update.revision) == (group.id, "firing", 1)
    assert update.added_subjects == ("e",)
    assert update.subjects == ("a", "b", "c", "d", "e")
    assert "now also on e" in update.summary
    assert engine.observe([finding(True, subject="e", statistic=0.95)], now=1.5).alerts == ()
    for t in (2.0, 3.0):
        quiet = engine.observe(
            [finding(False, subject=s) for s in "abcd"] + [finding(True, subject="e")], now=t
        )
        assert quiet.alerts == ()
    engine.observe([finding(False, subject="e")], now=4.0)
    (resolved,) = engine.observe([finding(False, subject="e")], now=5.0).alerts
    assert resolved.id == group.id
    assert resolved.status == "resolved"
    assert resolved.subjects == ("a", "b", "c", "d", "e")


def test_below_group_threshold_separate_alerts(finding: MakeFinding) -> None:
    engine = AlertEngine(cfg(grouping={"min_subjects": 3}))
    out = engine.observe([finding(True, subject="a"), finding(True, subject="b")], now=0.0)
    assert sorted(a.subject for a in out.alerts) == ["a", "b"]


def test_ids_deterministic_across_restart(finding: MakeFinding) -> None:
    """A crash after a checkpoint: replaying the same findings gives the same ids."""
    stream = [
        [finding(True, 999), finding(True, 999, subject="humidity")],
        [finding(True, 1999)],
        [finding(False, 2999), finding(False, 2999, subject="humidity")],
        [finding(False, 3999), finding(False, 3999, subject="humidity")],
    ]
    whole = AlertEngine(cfg())
    expected = [whole.observe(batch, now=float(i)).alerts for i, batch in enumerate(stream)]

    first = AlertEngine(cfg())
    got = [first.observe(stream[0], now=0.0).alerts]
    checkpoint = json.loads(json.dumps(first.state()))  # survives a JSON round trip
    first.observe(stream[1], now=1.0)  # processed, then the process dies
    restarted = AlertEngine(cfg())
    restarted.restore(checkpoint)
    got += [restarted.observe(batch, now=float(i)).alerts for i, batch in enumerate(stream)][1:]
    assert got == expected
    assert [a.status for batch in got for a in batch] == [
        "firing",
        "firing",
        "resolved",
        "resolved",
    ]
    assert restarted.state() == whole.state()


def test_retrain_request_once_per_cooldown(finding: MakeFinding) -> None:
    config = cfg(retrain_topic="ml.retrain", retrain={"cooldown": "1h"})
    engine = AlertEngine(config, retrain_models={"loans": ("loans", "7")})
    out = engine.observe(
        [finding(True, stream="loans", subject="salary"), finding(True, stream="sensors")],
        now=0.0,
    )
    (req,) = out.retrain_requests
    loans_alert = next(a for a in out.alerts if a.stream == "loans")
    assert (req.model, req.version, req.alert_ids) == ("loans", "7", (loans_alert.id,))
    assert req.baseline_id == "sensors-v1"
    assert req.window.last_offset == 999
    # another episode within the hour asks for nothing; after the hour it asks again
    out2 = engine.observe([finding(True, stream="loans", subject="car_value")], now=60.0)
    assert len(out2.alerts) == 1
    assert out2.retrain_requests == ()
    out3 = engine.observe([finding(True, stream="loans", subject="age")], now=3601.0)
    assert len(out3.retrain_requests) == 1
    assert out3.retrain_requests[0].trigger_id != req.trigger_id
    # a new model version is a new key: no cooldown carried over
    engine.set_model("loans", "loans", "8")
    out4 = engine.observe([finding(True, stream="loans", subject="zip")], now=3602.0)
    assert out4.retrain_requests[0].version == "8"

    sink = MemorySink()
    for m in to_out_messages(out, config):
        sink.send(m)
    assert [m.key for m in sink.on("ml.retrain")] == [b"loans"]
    assert {m.key for m in sink.on("driftwarden.alerts")} == {a.id.encode() for a in out.alerts}
    body = json.loads(sink.on("ml.retrain")[0].value)
    assert body["trigger_id"] == req.trigger_id
    assert body["alert_ids"] == [loans_alert.id]


def test_retrain_respects_min_severity(finding: MakeFinding) -> None:
    config = cfg(severities={"adwin": "info"})
    engine = AlertEngine(config, retrain_models={"sensors": ("m", "1")})
    assert engine.observe([finding(True, detector="adwin")], now=0).retrain_requests == ()


def test_combines_findings_of_one_key(finding: MakeFinding) -> None:
    engine = AlertEngine(cfg())
    out = engine.observe(
        [finding(False, partition=0), finding(True, partition=1, statistic=0.4)], now=0.0
    )
    (alert,) = out.alerts
    assert alert.evidence.statistic == 0.4
    assert alert.evidence.window.partition == 1


def test_non_finite_statistics_serialise(finding: MakeFinding) -> None:
    engine = AlertEngine(cfg())
    (alert,) = engine.observe([finding(True, statistic=float("inf"))], now=0.0).alerts
    assert json.loads(alert.to_json())["evidence"]["statistic"] is None


def test_links_and_repr_hide_secrets() -> None:
    config = load_alerts_config(
        {
            "links": {"dashboard": "http://grafana.local/d/x?stream={stream}&a={alert_id}"},
            "sinks": [
                {"type": "webhook", "url": "http://h/?token=TOPSECRET", "secret": "TOPSECRET"},
                {"type": "pagerduty", "routing_key": "TOPSECRET"},
            ],
        }
    )
    assert "TOPSECRET" not in repr(config)
    assert "TOPSECRET" not in str(config)
    assert "TOPSECRET" not in config.model_dump_json()


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"sinks": [{"type": "teams", "url": "x"}]}, "'webhook', 'slack', 'pagerduty'"),
        ({"cooldown": "soon"}, "alerts.cooldown: expected a duration like '30s'"),
        ({"resolve_after": 0}, "alerts.resolve_after"),
        ({"severities": {"ks": "page"}}, "'info', 'warning' or 'critical'"),
        ({"sinks": [{"type": "slack", "url": "x", "channel": "#a"}]}, "allowed: min_severity"),
        ({"grouping": {"min_subject": 2}}, "unknown key(s) 'min_subject'"),
        ({"links": {"d": "{stram}"}}, "allowed: ['alert_id'"),
    ],
)
def test_config_errors_name_key_and_allowed(data: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_alerts_config(data)
    assert needle in str(err.value)


def test_config_is_frozen_and_durations_parse() -> None:
    config = load_alerts_config({"cooldown": "2h", "retrain": {"cooldown": 90}})
    assert (config.cooldown, config.retrain.cooldown) == (7200.0, 90.0)
    with pytest.raises(Exception, match="frozen"):
        config.cooldown = 1.0  # type: ignore[misc]


def test_retrain_evidence_lists_each_feature_once_by_its_strongest_detector(
    finding: MakeFinding,
) -> None:
    engine = AlertEngine(cfg(), retrain_models={"sensors": ("m", "1")})
    out = engine.observe(
        [
            finding(True, subject="a", detector="ks", statistic=0.2),
            finding(True, subject="b", detector="ks", statistic=0.5),
            finding(True, subject="a", detector="psi", statistic=0.9),
            finding(True, subject="b", detector="psi", statistic=0.3),
        ],
        now=0.0,
    )
    (request,) = out.retrain_requests
    assert request.evidence is not None
    assert [f.subject for f in request.evidence.features] == ["a", "b"]
