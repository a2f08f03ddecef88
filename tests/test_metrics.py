from __future__ import annotations

import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from connectors.kafka import RawBatch
from monitor.config.schema import parse_config
from monitor.dev.synthetic import DEMO_STREAM, FIELD_KINDS, generate_fleet
from monitor.metrics import Metrics, MetricsServer
from monitor.pipeline.stream import StreamPipeline


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
    # Events with a bad value are accepted (that value excluded) and dead-lettered too.
    assert result.rejected == {k: v for k, v in want.items() if k not in FIELD_KINDS}
    assert result.violations == {k: v for k, v in want.items() if k in FIELD_KINDS}
    assert result.accepted == events.accepted()
    assert result.accepted + sum(result.rejected.values()) == result.events == 3_000
    for kind in ("out_of_range", "wrong_type"):
        assert (
            registry.get_sample_value(
                "driftwarden_field_violations_total",
                {"stream": "sensors", "field": "temperature", "reason": kind},
            )
            == want[kind]
        )
    assert (
        registry.get_sample_value(
            "driftwarden_limit_hits_total", {"stream": "sensors", "limit": "max_depth"}
        )
        == want["too_deep"]
    )
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
    offsets = [int(dict(m.headers)["driftwarden.offset"]) for m in result.out]
    assert offsets == sorted(offsets)  # one per dead-lettered event, in input order
    assert len(set(offsets)) == len(offsets)


def test_oversized_dead_letters_are_truncated_with_size_and_hash() -> None:
    import hashlib

    stream = {**DEMO_STREAM, "max_event_bytes": 10_000_000}
    config = parse_config({"kafka": {"bootstrap.servers": "x:1"}, "streams": [stream]}, env={})
    registry = CollectorRegistry()
    pipeline = StreamPipeline(
        config.streams[0], Metrics(registry), "dlq", dead_letter_max_bytes=1_000
    )
    huge = b'{"device_id": "d", "blob": "' + b"x" * 50_000 + b'"}'
    small = b"{bad"
    result = pipeline.process(_raw([huge, small], [b"k" * 20_000, b"k2"]))
    big, little = result.out
    assert len(big.value) == 1_000 and big.value == huge[:1_000]
    headers = dict(big.headers)
    assert headers["driftwarden.original_size"] == str(len(huge)).encode()
    assert headers["driftwarden.original_sha256"] == hashlib.sha256(huge).hexdigest().encode()
    assert headers["driftwarden.original_key_size"] == b"20000"
    assert big.key is not None and len(big.key) == 16_384
    assert little.value == small and "driftwarden.truncated" not in dict(little.headers)
    assert (
        registry.get_sample_value("driftwarden_dead_letters_truncated_total", {"stream": "sensors"})
        == 1
    )


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


def test_drift_gauges_follow_every_finding() -> None:
    """The gauges read each finding's values, also when the threshold and the drift
    flag are set only on change."""
    from detectors.base import Finding
    from monitor.pipeline.stream import record_findings

    registry = CollectorRegistry()
    metrics = Metrics(registry)

    def finding(stat: float, thr: float, drift: bool) -> Finding:
        return Finding("ks", "x", stat, thr, drift, 0.5, stream="s")

    def gauges() -> tuple[float | None, ...]:
        labels = {"stream": "s", "field": "x", "detector": "ks"}
        return tuple(
            registry.get_sample_value(f"driftwarden_drift_{name}", labels)
            for name in ("statistic", "threshold", "detected")
        )

    steps = [(0.01, 0.1, False), (0.2, 0.1, True), (0.02, 0.1, False), (0.03, 0.2, False)]
    for stat, thr, drift in steps:
        record_findings(metrics, [finding(stat, thr, drift)])
        assert gauges() == (stat, thr, 1.0 if drift else 0.0)
