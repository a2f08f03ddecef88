"""SIGTERM finishes the current batch, commits what it processed, and exits cleanly."""

from __future__ import annotations

import copy
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from connectors.embedded import free_port
from connectors.kafka import KafkaSource
from monitor.dev.synthetic import DEMO_STREAM, generate_fleet
from tests.kafka_utils import create_topics, produce

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_commits_exactly_what_was_processed(
    kafka_bootstrap: str, unique: str, tmp_path: Path, sig: signal.Signals
) -> None:
    unique = f"{unique}{sig.value}"
    topic = f"iot.{unique}"
    create_topics(kafka_bootstrap, {topic: 2, f"dlq.{unique}": 1})
    events = generate_fleet(30_000, seed=8, bad_rate=0.02)
    produce(kafka_bootstrap, topic, events.values, events.keys)
    port = free_port()
    config = {
        "kafka": {"bootstrap.servers": kafka_bootstrap, "session.timeout.ms": 6000},
        "group": f"dw-{unique}",
        "metrics": {"listen": f"127.0.0.1:{port}"},
        "dead_letter_topic": f"dlq.{unique}",
        # Small batches, so the signal lands mid-stream.
        "source": {"max_batch_events": 500, "max_wait": "100ms"},
        "streams": [copy.deepcopy(DEMO_STREAM) | {"topic": topic}],
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "--log-format", "json", "run", str(path), "--quiet"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                time.sleep(0.2)
                continue
            m = re.search(r"driftwarden_events_total\{[^}]*\} ([0-9.e+]+)", text)
            if m and float(m.group(1)) > 0:
                break
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    m = re.search(r"stopped: events=(\d+)", out)
    assert m, out
    processed = int(m.group(1))
    assert 0 < processed <= 30_000
    assert '"level": "info"' in err  # structured logs
    check = KafkaSource({"bootstrap.servers": kafka_bootstrap}, f"dw-{unique}", [topic])
    try:
        committed = check.committed([(topic, 0), (topic, 1)])
    finally:
        check.close()
    assert sum(max(0, o) for o in committed.values()) == processed
