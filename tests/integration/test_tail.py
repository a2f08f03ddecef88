"""``driftwarden tail``: dead letters, alerts and retrain requests, one readable line each."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Producer

from monitor.cli import main
from tests.kafka_utils import create_topics

pytestmark = pytest.mark.integration


def test_tail_prints_each_kind_of_record_readably(
    kafka_bootstrap: str, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = f"out.{unique}"
    create_topics(kafka_bootstrap, {topic: 1})
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(
        topic,
        value=b"\xff\x00not json" * 20,
        headers=[
            ("driftwarden.reason", b"invalid_json"),
            ("driftwarden.detail", b"unexpected character"),
            ("driftwarden.topic", b"iot.sensors"),
            ("driftwarden.partition", b"3"),
            ("driftwarden.offset", b"1234"),
        ],
    )
    alert = {
        "id": "a" * 32,
        "status": "firing",
        "severity": "critical",
        "stream": "sensors",
        "summary": "ks drift on sensors/vibration",
    }
    producer.produce(topic, value=json.dumps(alert).encode())
    retrain = {
        "trigger_id": "b" * 32,
        "model": "loans",
        "version": "3",
        "stream": "loans",
        "reason": "accuracy dropped",
    }
    producer.produce(topic, value=json.dumps(retrain).encode())
    producer.produce(topic, value=b"plain text")
    assert producer.flush(10) == 0

    assert main(["tail", topic, "--bootstrap", kafka_bootstrap, "--idle", "3"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 4, lines
    assert lines[0].startswith(f"{topic}/0@0 DEAD LETTER invalid_json from iot.sensors/3@1234")
    assert "... (200 bytes)" in lines[0]
    assert (
        "ALERT FIRING critical [sensors] ks drift on sensors/vibration (id aaaaaaaaaaaa)"
        in lines[1]
    )
    assert "RETRAIN loans v3 [loans] accuracy dropped (trigger bbbbbbbbbbbb)" in lines[2]
    assert lines[3].endswith("b'plain text'")
    assert "(4 record(s))" in captured.err
    assert main(["tail", topic, "--bootstrap", kafka_bootstrap, "--max", "1", "--idle", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
