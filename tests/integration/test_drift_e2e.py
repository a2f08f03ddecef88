"""Injected drift through the real broker: flagged on the drifted fields only."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from prometheus_client import CollectorRegistry

from monitor.cli import main
from monitor.config.schema import parse_config
from monitor.dev.synthetic import DEMO_STREAM, FIELD_KINDS, generate_fleet
from monitor.runtime.service import Service
from tests.kafka_utils import create_topics, produce

pytestmark = pytest.mark.integration


def _raw_config(bootstrap: str, unique: str, **stream_changes: Any) -> dict[str, Any]:
    stream = copy.deepcopy(DEMO_STREAM) | {"topic": f"iot.{unique}", **stream_changes}
    return {
        "kafka": {"bootstrap.servers": bootstrap, "session.timeout.ms": 6000},
        "group": f"dw-{unique}",
        "metrics": {"listen": "127.0.0.1:0"},
        "dead_letter_topic": f"dlq.{unique}",
        "source": {"max_batch_events": 5000, "max_wait": "200ms"},
        "streams": [stream],
    }


def test_drift_is_flagged_on_the_drifted_fields_only(kafka_bootstrap: str, unique: str) -> None:
    total, drift_at = 60_000, 30_000
    events = generate_fleet(total, seed=9, bad_rate=0.01, drift_at=drift_at)
    topic = f"iot.{unique}"
    create_topics(kafka_bootstrap, {topic: 1, f"dlq.{unique}": 1})  # one partition: global order
    produce(kafka_bootstrap, topic, events.values, events.keys)
    raw = _raw_config(
        kafka_bootstrap,
        unique,
        baseline={"first_events": 15_000},
        window={"events": 5000, "step": 1000},
    )
    registry = CollectorRegistry()
    service = Service(parse_config(raw, env={}), registry=registry)
    flagged: dict[tuple[str, str], int] = {}

    def until(stats: Any) -> bool:
        for _, fld, det in stats.drifting:
            flagged.setdefault((fld, det), stats.events)
        return bool(stats.events >= total)

    service.run(max_seconds=120, until=until)
    assert ("vibration", "ks") in flagged
    assert ("status", "chi2") in flagged
    assert not {f for f, _ in flagged} & {"temperature", "humidity"}, flagged
    # Flagged after the drift started, within two windows of it (events counted with bad ones).
    assert drift_at < flagged[("vibration", "ks")] <= drift_at + 12_000

    def gauge(name: str, field: str, det: str) -> float | None:
        return registry.get_sample_value(
            name, {"stream": "sensors", "field": field, "detector": det}
        )

    assert gauge("driftwarden_drift_detected", "vibration", "ks") == 1.0
    assert gauge("driftwarden_drift_detected", "temperature", "ks") == 0.0
    stat = gauge("driftwarden_drift_statistic", "vibration", "ks")
    threshold = gauge("driftwarden_drift_threshold", "vibration", "ks")
    assert stat is not None and threshold is not None and stat >= threshold


def test_baseline_build_from_file_and_topic(
    kafka_bootstrap: str, unique: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = generate_fleet(4_000, seed=1, bad_rate=0.02)
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_bytes(b"\n".join(events.values) + b"\n")
    csv_path = tmp_path / "train.csv"
    # The accepted events as the decoder sees them: a value excluded by a field-level
    # problem is blank (null) in CSV and Parquet, so every source gives the same values.
    bad_field = {"null_not_allowed": "vibration", "unknown_category": "status"}
    good = []
    for v, r in zip(events.values, events.expected, strict=True):
        if r is None or r in FIELD_KINDS:
            row = json.loads(v)
            if r is not None:
                row[bad_field.get(r, "temperature")] = None
            good.append(row)
    cols = ["device_id", "ts", "temperature", "humidity", "vibration", "status"]
    lines = [",".join(cols)] + [
        ",".join("" if g[c] is None else str(g[c]) for c in cols) for g in good
    ]
    csv_path.write_text("\n".join(lines) + "\n")
    topic = f"iot.{unique}"
    create_topics(kafka_bootstrap, {topic: 1})
    before = time.time() - 1
    produce(kafka_bootstrap, topic, events.values, events.keys)
    after = time.time() + 1
    parquet = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(good), parquet)
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump(_raw_config(kafka_bootstrap, unique)))

    outs = {}
    for name, source in (
        ("jsonl", ["--file", str(jsonl)]),
        ("csv", ["--file", str(csv_path)]),
        ("topic", ["--first-events", "4000"]),
        ("range", ["--topic-range", str(before), str(after)]),
        ("parquet", ["--file", str(parquet)]),
    ):
        out = tmp_path / f"{name}.json"
        args = ["baseline", "build", str(config_path), "--stream", "sensors", "--out", str(out)]
        assert main(args + source) == 0
        outs[name] = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert printed.count("wrote ") == 5
    # vibration counts in every accepted event but those whose vibration was null.
    good_count = events.accepted() - events.expected.count("null_not_allowed")
    for doc in outs.values():
        assert set(doc["fields"]) == {"temperature", "humidity", "vibration", "status"}
        assert doc["fields"]["status"]["categories"] == ["ok", "warn", "fail"]
    assert outs["jsonl"]["fields"]["vibration"]["n"] == good_count
    assert outs["topic"]["fields"]["vibration"]["n"] == good_count
    # The same events give the same distribution whatever the source.
    assert (
        outs["csv"]["content_hash"]
        == outs["jsonl"]["content_hash"]
        == outs["topic"]["content_hash"]
    )

    # A stream configured with the file uses it from the first event.
    raw = _raw_config(
        kafka_bootstrap, f"{unique}b", baseline={"file": str(tmp_path / "jsonl.json")}
    )
    create_topics(kafka_bootstrap, {f"iot.{unique}b": 1})
    service = Service(parse_config(raw, env={}), registry=CollectorRegistry(), source=_NoSource())
    stage = service.runner.pipelines[f"iot.{unique}b"].stages[0]
    assert stage.ready and stage.baseline.id == outs["jsonl"]["id"]  # type: ignore[attr-defined]
    service.close()


class _NoSource:
    def __init__(self) -> None:
        self.assignment: set[tuple[str, int]] = set()

    def poll(self) -> list[Any]:
        return []

    def commit(self, next_offsets: Any) -> None:
        return None

    def lag(self, positions: Any) -> dict[tuple[str, int], int]:
        return {}

    def probe(self, timeout: float) -> bool:
        return True

    def partition_count(self, topic: str) -> int:
        return 1

    def close(self) -> None:
        return None
