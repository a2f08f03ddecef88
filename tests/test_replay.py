"""``driftwarden replay``: the engine over a file, offline, with HTML and JSON reports."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from monitor.cli import main
from monitor.config.schema import parse_config
from monitor.dev import synthetic
from monitor.dev.synthetic import DEMO_STREAM, generate_fleet
from monitor.runtime.replay import render_report_html, replay

TOTAL, DRIFT_AT = 40_000, 20_000


def _config(**stream: Any) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap.servers": "127.0.0.1:9"},
        "group": "replay-test",
        "dead_letter_topic": "dlq",
        "streams": [
            copy.deepcopy(DEMO_STREAM)
            | {"baseline": {"first_events": 10_000}, "window": {"events": 4000, "step": 1000}}
            | stream
        ],
    }


@pytest.fixture(scope="module")
def fleet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    events = generate_fleet(TOTAL, seed=11, bad_rate=0.01, drift_at=DRIFT_AT)
    path = tmp_path_factory.mktemp("replay") / "fleet.jsonl"
    path.write_bytes(b"\n".join(events.values) + b"\n")
    return path


def test_replay_flags_the_drifted_fields_after_the_shift(fleet_file: Path) -> None:
    report = replay(parse_config(_config(), env={}), fleet_file)
    assert report.events == TOTAL
    assert report.accepted + sum(n for _, n in report.rejected) == TOTAL
    first = report.findings_at()
    assert first[("vibration", "ks")] is not None
    assert DRIFT_AT < first[("vibration", "ks")] <= DRIFT_AT + 8_000  # type: ignore[operator]
    assert first[("status", "chi2")] is not None
    assert first[("temperature", "ks")] is None and first[("humidity", "ks")] is None
    # A verdict at every step once the baseline and the first window are in.
    ks = next(s for s in report.series if s.subject == "vibration" and s.detector == "ks")
    assert ks.positions[1] - ks.positions[0] == 1000
    fired = {(a.subject, a.detector) for a in report.alerts if a.status == "firing"}
    assert ("vibration", "ks") in fired or any("vibration" in s for s, _ in fired)
    dists = {d.field: d for d in report.distributions}
    assert set(dists) >= {"temperature", "vibration", "status"}
    assert abs(sum(dists["vibration"].reference) - 1) < 1e-9
    assert dists["status"].labels[-1] == "(unseen)"


def test_report_is_self_contained_html_and_the_same_content_as_json(
    fleet_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps(_config()))  # JSON is YAML
    html_out, json_out = tmp_path / "r.html", tmp_path / "r.json"
    code = main(
        [
            "replay",
            str(fleet_file),
            "--config",
            str(cfg),
            "--report",
            str(html_out),
            "--json",
            str(json_out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert f"replayed {TOTAL:,} events" in printed and "alert(s) fired" in printed
    page = html_out.read_text()
    assert page.count("<svg") >= 8 and "<script" not in page and "http" not in page
    doc = json.loads(json_out.read_text())
    assert doc["events"] == TOTAL and doc["stream"] == "sensors"
    assert {(s["subject"], s["detector"]) for s in doc["series"]} >= {("vibration", "ks")}
    assert render_report_html(replay(parse_config(_config(), env={}), fleet_file)).count(
        b"<svg"
    ) == page.count("<svg")


def test_replay_of_a_nab_series_with_the_shipped_example_config(tmp_path: Path) -> None:
    # The NAB series bundled with the synthetic generators (MIT licence, see its README).
    nab = Path(synthetic.__file__).parent / "data" / "nab_machine_temperature_system_failure.csv"
    root = Path(__file__).parents[1]
    code = main(
        [
            "replay",
            str(nab),
            "--config",
            str(root / "deploy/examples/nab-replay.yaml"),
            "--json",
            str(tmp_path / "nab.json"),
        ]
    )
    assert code == 0
    doc = json.loads((tmp_path / "nab.json").read_text())
    assert doc["events"] == 22_695 and doc["accepted"] == 22_695


def test_unknown_stream_is_a_one_line_error(fleet_file: Path) -> None:
    from monitor.errors import ConfigError

    with pytest.raises(ConfigError, match="no stream 'nope'; allowed: sensors"):
        replay(parse_config(_config(), env={}), fleet_file, stream="nope")
