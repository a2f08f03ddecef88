"""``driftwarden replay``'s device and model sections: a fleet file with injected
failures and a model file with labels (from a file, from the rows, or none)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from monitor.cli import main
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
from monitor.errors import ConfigError
from monitor.runtime.replay import render_report_html, replay

FLEET_SECONDS = 60.0
MODEL_EVENTS, MODEL_DRIFT_AT = 10_000, 4_000


def _config(stream: dict[str, Any]) -> dict[str, Any]:
    return {"kafka": {"bootstrap.servers": "127.0.0.1:9"}, "streams": [stream]}


def _scenario() -> FleetScenario:
    return FleetScenario(
        devices=DEMO_DEVICES,
        period=DEMO_PERIOD,
        start=1.79e9,
        failures=demo_failures(FLEET_SECONDS),
        drift_shift=12.0,
        seed=3,
    )


@pytest.fixture(scope="module")
def fleet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [p for c in _scenario().chunks(0.0, FLEET_SECONDS, 10.0) for p in c.payloads()]
    path = tmp_path_factory.mktemp("fleet") / "fleet.jsonl"
    path.write_bytes(b"\n".join(rows) + b"\n")
    return path


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("model")
    (d / "reference.jsonl").write_bytes(b"\n".join(reference_rows(5_000, seed=5)) + b"\n")
    ev = generate_model_events(
        MODEL_EVENTS, seed=11, drift_at=MODEL_DRIFT_AT, start=1.79e9, label_delay=8.0
    )
    (d / "inference.jsonl").write_bytes(b"\n".join(ev.inference) + b"\n")
    # one undecodable label event first: rejected, counted, and the rest still joins
    (d / "labels.jsonl").write_bytes(b"\n".join([b"{not json", *ev.labels]) + b"\n")
    with_labels = []
    for row, truth in zip(ev.inference, ev.truth.tolist(), strict=True):
        doc = msgspec.json.decode(row) | {"defaulted": int(truth)}
        with_labels.append(msgspec.json.encode(doc))
    (d / "labelled.jsonl").write_bytes(b"\n".join(with_labels) + b"\n")
    return {
        "reference": d / "reference.jsonl",
        "inference": d / "inference.jsonl",
        "labels": d / "labels.jsonl",
        "labelled": d / "labelled.jsonl",
    }


def _model_config(reference: Path) -> dict[str, Any]:
    stream = copy.deepcopy(MODEL_STREAM)
    stream["model"]["reference"] = {"file": str(reference), "id": "loans-reference"}
    return _config(stream)


def test_a_fleet_replay_flags_exactly_the_failing_devices(fleet_file: Path) -> None:
    report = replay(parse_config(_config(demo_fleet_stream("iot.fleet")), env={}), fleet_file)
    fleet = report.fleet
    assert fleet is not None and report.model is None
    assert fleet.conditions == CONDITIONS
    scenario = _scenario()
    devices = dict(fleet.devices)
    for condition in CONDITIONS:
        failing = {f"dev-{d:05d}" for d in scenario.failing(condition)}
        flagged = {f.entity for f in fleet.flagged if f.condition == condition}
        assert devices[condition] == len(failing), condition
        # the bounded list: the first ``limit`` devices flagged, all of them failing
        assert flagged <= failing and len(flagged) == min(len(failing), fleet.limit)
    # counts over time: nobody before the failures, the silent site at the end
    counts = dict(fleet.unhealthy)
    assert len(fleet.positions) == len(counts["silent"]) > 5
    assert max(counts["stuck"][:3]) == 0 and counts["silent"][-1] == 30
    assert fleet.final is not None
    worst = dict(fleet.final.worst)
    assert {d.entity for d in worst["stuck"]} == {"dev-00050"}
    assert worst["stuck"][0].run_length >= 6
    # the evidence rides along, and the JSON says the same
    stuck = next(f for f in fleet.flagged if f.condition == "stuck")
    assert dict(stuck.evidence)["run_length.f0"] >= 6
    doc = report.to_dict()["fleet"]
    assert doc["devices"] == devices and len(doc["flagged"]) == len(fleet.flagged)
    assert doc["final"]["worst"]["stuck"][0]["entity"] == "dev-00050"
    # device findings are not drawn as field series (one per device)
    assert all(s.subject in ("f0", "f1", "f2", "f3", "f4") for s in report.series)
    page = render_report_html(report).decode()
    assert "Devices of stream fleet" in page and "Flagged devices" in page
    assert "dev-00050" in page and "<script" not in page


def test_a_model_replay_with_a_label_file_shows_quality_and_retrain_requests(
    model_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps(_model_config(model_files["reference"])))
    html_out, json_out = tmp_path / "r.html", tmp_path / "r.json"
    argv = [
        "replay",
        str(model_files["inference"]),
        "--config",
        str(cfg),
        "--labels",
        str(model_files["labels"]),
        "--report",
        str(html_out),
        "--json",
        str(json_out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "model loans:" in printed and "labels read" in printed
    model = json.loads(json_out.read_text())["model"]
    assert model["labels"].startswith("file labels.jsonl")
    assert model["join_counts"]["joined"] > 0.95 * MODEL_EVENTS
    assert model["labels_rejected"] == {"invalid_json": 1}
    quality = {(q["metric"], q["source"]): q for q in model["quality"]}
    realized, estimated = quality[("accuracy", "realized")], quality[("accuracy", "estimated")]
    assert len(realized["values"]) >= 5 and len(estimated["values"]) >= 5
    first = {
        k: next(p for p, d in zip(q["positions"], q["drift"], strict=True) if d)
        for k, q in (("realized", realized), ("estimated", estimated))
    }
    # the estimate sees the drop before the labels do; neither before the drift
    assert MODEL_DRIFT_AT < first["estimated"] <= first["realized"]
    assert not any(realized["drift"][:3]) and realized["values"][-1] < realized["references"][-1]
    errors = quality[("accuracy", "estimate_error")]["values"]
    assert errors and max(abs(x) for x in errors) < 0.1
    assert model["retrain"] and model["retrain"][0]["position"] > MODEL_DRIFT_AT
    assert [f["field"] for f in model["features"]][:2] in (["x1", "x2"], ["x2", "x1"])
    assert model["tables"][0]["title"].endswith("quality")
    page = html_out.read_text()
    assert "Model loans" in page and "Retrain requests" in page and "Prediction drift" in page


def test_labels_in_the_replayed_rows_and_no_labels(model_files: dict[str, Path]) -> None:
    config = parse_config(_model_config(model_files["reference"]), env={})
    inline = replay(config, model_files["labelled"]).model
    assert inline is not None and inline.labels.startswith("the rows' own field 'defaulted'")
    assert dict(inline.join_counts)["joined"] == MODEL_EVENTS == inline.labels_read
    assert any(q.source == "realized" and q.first_drop for q in inline.quality)
    unlabelled = replay(config, model_files["inference"]).model
    assert unlabelled is not None and unlabelled.labels_read == 0
    assert {q.source for q in unlabelled.quality} == {"estimated"}


def test_labels_for_a_stream_without_labels_is_a_one_line_error(fleet_file: Path) -> None:
    config = parse_config(_config(demo_fleet_stream("iot.fleet")), env={})
    with pytest.raises(ConfigError, match=r"--labels: stream 'fleet' has no model\.labels"):
        replay(config, fleet_file, labels=fleet_file)
