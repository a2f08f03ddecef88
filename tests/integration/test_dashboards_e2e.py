"""Every dashboard query against a real Prometheus scraping the running service.

The service reads three streams from the embedded broker, with alerts to a local
webhook and to a sink that refuses connections; Prometheus scrapes it every second:

* ``sensors``: a drifting synthetic fleet (bad records of every reason, more devices
  than ``max_entities``), feeding a model named for retrain requests;
* ``fleet``: 200 devices with a fleet section, of which some go silent, freeze, send
  out-of-range values, spike and drift from the fleet at known times
  (``monitor.dev.fleet_demo``);
* ``loans-model``: a classifier's inference events and, on a label topic, their
  delayed labels; its inputs drift halfway, so labels join, realized and estimated
  (CBPE) quality are published and retrain requests go out
  (``monitor.dev.model_synthetic``). Its deploy topic does not exist: the Kafka
  client reports an unknown topic.

Each panel's PromQL must parse (``/api/v1/query`` accepts it) and each panel must
return data, except the ones in ``MAY_BE_EMPTY``; the injected problems must show in
the metrics the panels read (``EXPECTED``).
"""

from __future__ import annotations

import copy
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from grafana.generate import DASHBOARD_DIR
from monitor.config.schema import parse_config
from monitor.dev.fleet_demo import (
    CONDITIONS,
    DEMO_DEVICES,
    DEMO_PERIOD,
    FleetScenario,
    demo_failures,
    demo_fleet_stream,
)
from monitor.dev.model_synthetic import MODEL_STREAM, generate_model_events, reference_rows
from monitor.dev.synthetic import DEMO_STREAM, generate_fleet
from monitor.runtime.service import Service
from tests.alerts_utils import free_port, prometheus_stack, receiver
from tests.grafana.promql import Target, dashboards, targets
from tests.kafka_utils import create_topics, produce

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOTAL, DRIFT_AT = 32_000, 12_000  # ADWIN needs 10k values on both sides of a cut
FLEET_SECONDS = 60.0  # of event time: 200 devices every 2 s, failures from 30 s on
MODEL_EVENTS, MODEL_DRIFT_AT = 10_000, 4_000

# The one list of panels allowed to show no data here, each with the reason it cannot
# have data in a bounded test on a healthy local broker. Every other panel must.
MAY_BE_EMPTY: dict[tuple[str, str], str] = {
    # Counted when the broker refuses an outgoing record (message too large, topic
    # deleted, ...). The sink retries a refused record until the broker takes it and
    # the commit waits, so a refusal stalls the stream it came from: provoking one
    # here would stop the data the other panels need. The embedded broker accepts
    # every record (tests/test_dead_letter_delivery.py tests the retry and its count).
    (
        "driftwarden-service-health",
        "Outgoing records (dead letters, alerts) the broker refused; retried, the commit "
        "waits (per second)",
    ): "the broker accepts every record",
}

# PromQL that must return a series by the end: what the test drives shows on the panels.
EXPECTED: dict[str, str] = {
    "drift on sensors/vibration": 'driftwarden_drift_detected{field="vibration"} == 1',
    **{
        f"fleet condition {c}": (
            f'driftwarden_fleet_detections_total{{stream="fleet", condition="{c}"}} > 0'
        )
        for c in CONDITIONS
    },
    "labels joined": 'driftwarden_model_labels_total{model="loans", outcome="joined"} > 0',
    "realized quality": 'driftwarden_model_quality{model="loans", source="realized"}',
    "estimated quality": 'driftwarden_model_quality{model="loans", source="estimated"}',
    "estimate error": 'driftwarden_model_estimate_error{model="loans"}',
    "retrain requests for loans": 'driftwarden_retrain_requests_total{model="loans"} > 0',
    "the missing deploy topic": 'driftwarden_kafka_errors_total{kind="unknown_topic_or_part"}',
}


def _query(prom: str, expr: str) -> tuple[str, list[Any]]:
    """(status, result) of an instant query; status "error: ..." when Prometheus rejects it."""
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            doc = json.loads(r.read())
    except urllib.error.HTTPError as e:
        doc = json.loads(e.read() or b"{}")
    if doc.get("status") != "success":
        return f"error: {doc.get('errorType')}: {doc.get('error')}", []
    result = doc["data"]["result"]
    return "success", result if isinstance(result, list) else [result]


def _config(
    bootstrap: str, name: str, hook: str, dead: str, reference: Path
) -> tuple[Any, dict[str, int]]:
    """The service's config, and the topics to create (name -> partitions)."""
    stream = copy.deepcopy(DEMO_STREAM) | {
        "topic": f"iot.{name}",
        "baseline": {"first_events": 5_000},
        "window": {"events": 2_000, "step": 500},
        "max_entities": 60,  # 100 devices: some events overflow the bound
        "model": {"name": "sensor-anomaly", "version": "3"},
    }
    fleet = demo_fleet_stream(f"fleet.{name}")
    model = copy.deepcopy(MODEL_STREAM)
    model["topic"] = f"inference.{name}"
    model["model"]["labels"]["topic"] = f"labels.{name}"
    model["model"]["reference"] = {"file": str(reference), "id": "loans-reference"}
    # A deploy topic nobody created yet: the Kafka client reports it (unknown topic),
    # which is what the "Kafka client errors" panel shows; the stream works without it.
    model["model"]["deploy_topic"] = f"deploys.{name}"
    topics = {stream["topic"]: 1, fleet["topic"]: 1, model["topic"]: 1, f"labels.{name}": 1}
    return parse_config(
        {
            "kafka": {"bootstrap.servers": bootstrap, "session.timeout.ms": 6000},
            "group": f"dw-{name}",
            "metrics": {"listen": "127.0.0.1:0"},
            "dead_letter_topic": f"dlq.{name}",
            "source": {"max_batch_events": 500, "max_wait": "100ms"},
            "state": {"topic": f"state.{name}", "every_seconds": "1s"},
            "streams": [stream, fleet, model],
            "alerts": {
                "topic": f"alerts.{name}",
                "retrain_topic": f"retrain.{name}",
                "resolve_after": 3,
                "retrain": {"min_severity": "info", "cooldown": "1s"},
                "delivery": {"queue_size": 2, "backoff_initial": "50ms", "backoff_max": "100ms"},
                "sinks": [
                    {"type": "webhook", "name": "hook", "url": hook, "secret": "s3cret"},
                    {
                        "type": "webhook",
                        "name": "down",
                        "url": dead,
                        "timeout": 0.5,
                        "unsigned": True,
                    },
                ],
            },
        },
        env={},
    ), topics


def _produce_fleet(bootstrap: str, topic: str) -> None:
    """The demo fleet with its failures, all at once, stamped in the recent past."""
    scenario = FleetScenario(
        devices=DEMO_DEVICES,
        period=DEMO_PERIOD,
        start=time.time() - 600.0,
        failures=demo_failures(FLEET_SECONDS),
        drift_shift=12.0,
        seed=3,
    )
    values: list[bytes | None] = []
    keys: list[bytes] = []
    for chunk in scenario.chunks(0.0, FLEET_SECONDS, 10.0):
        values += chunk.payloads()
        keys += [f"dev-{c:05d}".encode() for c in chunk.codes.tolist()]
    produce(bootstrap, topic, values, keys)


def _produce_model(bootstrap: str, inference: str, labels: str) -> None:
    """Predictions whose inputs drift halfway, and their labels about 8 s later."""
    ev = generate_model_events(
        MODEL_EVENTS,
        seed=11,
        drift_at=MODEL_DRIFT_AT,
        start=time.time() - 600.0,
        label_delay=8.0,
    )
    produce(bootstrap, inference, list(ev.inference), ev.inference_keys)
    produce(bootstrap, labels, list(ev.labels), ev.label_keys)


def _has_data(prom: str, group: list[Target]) -> bool:
    return any(_query(prom, t.promql)[1] for t in group)


def _label_values(prom: str, query: str) -> str:
    """Run a Grafana ``label_values(selector, label)`` against the label values API."""
    inner = query.removeprefix("label_values(").removesuffix(")")
    selector, _, label = inner.rpartition(",")
    for key, value in (("$stream", ".*"), ("$field", ".*")):
        selector = selector.replace(key, value)
    url = f"{prom}/api/v1/label/{label.strip()}/values?" + urllib.parse.urlencode(
        {"match[]": selector.strip()}
    )
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(json.loads(r.read())["status"])


def test_every_panel_query_parses_and_returns_data(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    reference = tmp_path / "loans-reference.jsonl"
    reference.write_bytes(b"\n".join(reference_rows(5_000, seed=5)) + b"\n")
    all_targets = targets()
    by_panel: dict[tuple[str, str], list[Target]] = {}
    for t in all_targets:
        by_panel.setdefault((t.dashboard, t.panel), []).append(t)
    assert set(MAY_BE_EMPTY) <= set(by_panel), "MAY_BE_EMPTY names a panel that does not exist"

    with receiver() as rx:
        dead = f"http://127.0.0.1:{free_port()}/refused"
        config, topics = _config(kafka_bootstrap, unique, f"{rx.url}/hook", dead, reference)
        create_topics(kafka_bootstrap, topics)
        events = generate_fleet(TOTAL, seed=5, bad_rate=0.03, drift_at=DRIFT_AT)
        produce(kafka_bootstrap, f"iot.{unique}", events.values, events.keys)
        _produce_fleet(kafka_bootstrap, f"fleet.{unique}")
        _produce_model(kafka_bootstrap, f"inference.{unique}", f"labels.{unique}")
        service = Service(config, registry=CollectorRegistry())
        host, port = service.metrics_address or ("", 0)
        with prometheus_stack(tmp_path, f"{host}:{port}", f"{rx.url}/am") as stack:
            prom = stack["prom"]
            # Every expression parses, before any data exists.
            errors = {
                (t.dashboard, t.panel, t.expr): status
                for t in all_targets
                if (status := _query(prom, t.promql)[0]) != "success"
            }
            assert not errors, errors
            for doc in dashboards().values():
                for var in doc["templating"]["list"]:
                    if var["type"] == "query":
                        assert _label_values(prom, var["query"]) == "success", var["query"]
            runner = threading.Thread(target=service.run, kwargs={"max_seconds": 70})
            runner.start()
            try:
                waiting = set(by_panel) - set(MAY_BE_EMPTY)
                missing = dict(EXPECTED)
                deadline = time.monotonic() + 50
                while (waiting or missing) and time.monotonic() < deadline:
                    waiting = {k for k in waiting if not _has_data(prom, by_panel[k])}
                    missing = {k: q for k, q in missing.items() if not _query(prom, q)[1]}
                    time.sleep(1.0)
            finally:
                service.stop()
                runner.join(30)
    assert not runner.is_alive()
    assert not waiting, f"panels without data: {sorted(waiting)}"
    assert not missing, f"not shown in the metrics: {sorted(missing)}"
    assert len(list(DASHBOARD_DIR.glob("*.json"))) == len(dashboards())
