from __future__ import annotations

import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from connectors.kafka import RawBatch
from monitor.config import parse_config
from monitor.metrics import Metrics, MetricsServer
from monitor.pipeline import StreamPipeline
from monitor.synthetic import DEMO_STREAM, generate_fleet


def _raw(values: list[bytes], keys: list[bytes], topic: str = "iot.sensors") -> RawBatch:
    n = len(values)
    return RawBatch(
        topic=topic,
        values=list(values),
        partitions=np.zeros(n, dtype=np.int32),
        offsets=np.arange(n, dtype=np.int64),
        keys=list(keys),
        timestamps=np.full(n, 1_700_000_000_000, dtype=np.int64),
    )


def test_pipeline_counts_and_dead_letters_on_an_injected_registry() -> None:
    config = parse_config({"kafka": {"bootstrap.servers": "x:1"}, "streams": [DEMO_STREAM]}, env={})
    registry = CollectorRegistry()
    pipeline = StreamPipeline(config.streams[0], Metrics(registry), "dlq")
    events = generate_fleet(3_000, seed=2, bad_rate=0.05)
    result = pipeline.process(_raw(events.values, events.keys))
    want = {k: v for k, v in events.counts().items() if k != "good"}
    assert result.rejected == want
    assert result.next_offsets == {("iot.sensors", 0): 3_000}
    for reason, count in want.items():
        value = registry.get_sample_value(
            "driftwarden_invalid_events_total", {"stream": "sensors", "reason": reason}
        )
        assert value == count
    assert (
        registry.get_sample_value(
            "driftwarden_events_total", {"stream": "sensors", "topic": "iot.sensors"}
        )
        == 3_000
    )
    ratio = registry.get_sample_value(
        "driftwarden_null_ratio", {"stream": "sensors", "field": "humidity"}
    )
    assert ratio is not None and 0.0 < ratio < 0.1
    assert [m.topic for m in result.out] == ["dlq"] * sum(want.values())
    first = result.out[0]
    headers = dict(first.headers)
    assert headers["driftwarden.reason"].decode() in want
    assert first.key is not None and first.key.startswith(b"dev-")


def test_no_entity_ids_or_free_text_in_labels() -> None:
    config = parse_config({"kafka": {"bootstrap.servers": "x:1"}, "streams": [DEMO_STREAM]}, env={})
    registry = CollectorRegistry()
    pipeline = StreamPipeline(config.streams[0], Metrics(registry), "dlq")
    events = generate_fleet(500, seed=4, bad_rate=0.2)
    pipeline.process(_raw(events.values, events.keys))
    text = Metrics.render(pipeline.metrics).decode()
    assert "dev-0" not in text
    assert "Expected" not in text  # reject details stay in dead letters, not labels


def test_server_endpoints() -> None:
    metrics = Metrics(CollectorRegistry())
    state = {"ready": False}
    server = MetricsServer(metrics, "127.0.0.1", 0, ready=lambda: state["ready"]).start()
    host, port = server.address
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
            assert b"driftwarden_ready" in r.read()
            assert r.headers["Content-Type"].startswith("text/plain")
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=5) as r:
            assert r.status == 200
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=5)
        assert info.value.code == 503
        info.value.close()
        state["ready"] = True
        with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=5) as r:
            assert r.status == 200
    finally:
        server.stop()
