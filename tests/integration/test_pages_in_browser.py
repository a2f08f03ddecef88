"""The status page of a running service and the replay report, opened in Chromium."""

from __future__ import annotations

import copy
import json
import os
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from monitor.config.schema import parse_config
from monitor.dev.synthetic import DEMO_STREAM, generate_fleet
from monitor.runtime.replay import replay, write_report
from monitor.runtime.service import Service
from tests.browser import dump_dom, screenshot
from tests.kafka_utils import create_topics, produce

pytestmark = pytest.mark.integration

DOCS = Path(__file__).parents[2] / "docs"
# Screenshots are copied into docs/ only when asked (DRIFTWARDEN_UPDATE_DOCS=1).
UPDATE_DOCS = os.environ.get("DRIFTWARDEN_UPDATE_DOCS") == "1"


def _stream() -> dict[str, Any]:
    return copy.deepcopy(DEMO_STREAM) | {
        "baseline": {"first_events": 8000},
        "window": {"events": 4000, "step": 1000},
    }


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        body: bytes = resp.read()
        return body


def test_status_page_renders_drift_charts_in_a_browser(
    kafka_bootstrap: str, unique: str, tmp_path: Path
) -> None:
    total, drift_at = 30_000, 15_000
    events = generate_fleet(total, seed=5, bad_rate=0.02, drift_at=drift_at)
    topic = f"iot.{unique}"
    create_topics(kafka_bootstrap, {topic: 2, f"dlq.{unique}": 1, f"alerts.{unique}": 1})
    produce(kafka_bootstrap, topic, events.values, events.keys)
    raw = {
        "kafka": {"bootstrap.servers": kafka_bootstrap, "session.timeout.ms": 6000},
        "group": f"dw-{unique}",
        "metrics": {"listen": "127.0.0.1:0"},
        "dead_letter_topic": f"dlq.{unique}",
        "source": {"max_batch_events": 2000, "max_wait": "200ms"},
        "streams": [_stream() | {"topic": topic}],
        "alerts": {"topic": f"alerts.{unique}"},
        "state": {"enabled": False},
    }
    service = Service(parse_config(raw, env={}), registry=CollectorRegistry())
    address = service.metrics_address
    assert address is not None
    base = f"http://127.0.0.1:{address[1]}"
    runner = threading.Thread(target=service.run, kwargs={"max_seconds": 90}, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = json.loads(_get(base + "/status.json"))
            streams = status.get("streams", [])
            if streams and streams[0]["events"] >= total and status["alerts"]:
                break
            time.sleep(0.5)
        stream = status["streams"][0]
        assert stream["events"] == total
        top = stream["fields"][0]
        assert top["drift"] and top["subject"] in {"vibration", "status"}, top
        assert len(top["history"]) >= 3
        assert status["alerts"], "an alert is open"

        dom = dump_dom(base + "/status")
        assert "driftwarden status" in dom and "Stream sensors" in dom
        assert dom.count('class="spark"') >= 4 and "<polyline" in dom
        assert "Open alerts" in dom and "drift" in dom
        shot = screenshot(base + "/status", tmp_path / "status.png")
        if UPDATE_DOCS:
            (DOCS / "status-page.png").write_bytes(shot.read_bytes())
    finally:
        service.stop()
        runner.join(30)


def test_replay_report_renders_in_a_browser(tmp_path: Path) -> None:
    events = generate_fleet(30_000, seed=3, bad_rate=0.01, drift_at=15_000)
    data = tmp_path / "fleet.jsonl"
    data.write_bytes(b"\n".join(events.values) + b"\n")
    raw = {
        "kafka": {"bootstrap.servers": "127.0.0.1:9"},
        "group": "g",
        "dead_letter_topic": "dlq",
        "streams": [_stream()],
    }
    report = replay(parse_config(raw, env={}), data)
    out = tmp_path / "report.html"
    write_report(report, out, None)
    dom = dump_dom(out.as_uri())
    assert "Replay of fleet.jsonl" in dom
    assert dom.count('class="chart"') >= 6 and dom.count('class="bars"') >= 3
    assert "drift from event" in dom
    shot = screenshot(out.as_uri(), tmp_path / "report.png")
    if UPDATE_DOCS:
        (DOCS / "replay-report.png").write_bytes(shot.read_bytes())


def test_replay_report_device_and_model_sections_render_in_a_browser(tmp_path: Path) -> None:
    from monitor.dev.fleet_demo import FleetScenario, demo_failures, demo_fleet_stream
    from monitor.dev.model_synthetic import MODEL_STREAM, generate_model_events, reference_rows

    kafka = {"bootstrap.servers": "127.0.0.1:9"}
    scenario = FleetScenario(
        devices=200, period=2.0, start=1.79e9, failures=demo_failures(60.0), drift_shift=12.0
    )
    fleet = tmp_path / "fleet.jsonl"
    fleet.write_bytes(
        b"\n".join(p for c in scenario.chunks(0.0, 60.0, 10.0) for p in c.payloads()) + b"\n"
    )
    config = parse_config({"kafka": kafka, "streams": [demo_fleet_stream("iot.fleet")]}, env={})
    fleet_page = tmp_path / "fleet.html"
    write_report(replay(config, fleet), fleet_page, None)

    reference = tmp_path / "reference.jsonl"
    reference.write_bytes(b"\n".join(reference_rows(5_000, seed=5)) + b"\n")
    ev = generate_model_events(10_000, seed=11, drift_at=4_000, start=1.79e9, label_delay=8.0)
    inference, labels = tmp_path / "inference.jsonl", tmp_path / "labels.jsonl"
    inference.write_bytes(b"\n".join(ev.inference) + b"\n")
    labels.write_bytes(b"\n".join(ev.labels) + b"\n")
    stream = copy.deepcopy(MODEL_STREAM)
    stream["model"]["reference"] = {"file": str(reference), "id": "loans-reference"}
    config = parse_config({"kafka": kafka, "streams": [stream]}, env={})
    model_page = tmp_path / "model.html"
    write_report(replay(config, inference, labels=labels), model_page, None)

    dom = dump_dom(fleet_page.as_uri())
    assert "Devices of stream fleet" in dom and "Flagged devices" in dom
    assert "Worst devices at the end" in dom and "dev-00050" in dom
    assert dom.count('class="chart"') >= 1 and dom.count("<polyline") >= 5  # one per condition
    dom = dump_dom(model_page.as_uri())
    assert "Model loans (stream loans-model)" in dom and "Prediction drift" in dom
    assert "accuracy of version 1" in dom and "realized drop from event" in dom
    assert "estimated drop from event" in dom and "Retrain requests" in dom
    assert dom.count('class="chart"') >= 10 and dom.count('class="bars"') >= 3
    for page, name in ((fleet_page, "replay-fleet.png"), (model_page, "replay-model.png")):
        shot = screenshot(page.as_uri(), tmp_path / name, height=1400)
        if UPDATE_DOCS:
            (DOCS / name).write_bytes(shot.read_bytes())
