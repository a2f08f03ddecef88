"""``make demo``: embedded broker, drifting synthetic fleet and the monitor, bounded in time."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import yaml

from monitor.config import Config, parse_config
from monitor.synthetic import DEMO_STREAM, generate_fleet

__all__ = ["create_topic", "demo_config", "produce_fleet", "run_demo"]

log = logging.getLogger("driftwarden.demo")


def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    """Create ``topic`` unless it exists."""
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    if topic in admin.list_topics(timeout=10).topics:
        return
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(10)


def produce_fleet(
    bootstrap: str,
    topic: str,
    *,
    events: int,
    rate: float = 0.0,
    drift_at: int | None = None,
    partitions: int = 3,
    seed: int = 7,
    chunk: int = 2_000,
    stop: threading.Event | None = None,
    bad_rate: float = 0.03,
) -> int:
    """Produce ``events`` synthetic fleet events (``rate`` per second, 0 = unthrottled)."""
    from confluent_kafka import Producer

    create_topic(bootstrap, topic, partitions)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 10, "enable.idempotence": True}
    )
    started = time.monotonic()
    produced = 0
    try:
        while produced < events and not (stop is not None and stop.is_set()):
            n = min(chunk, events - produced)
            batch = generate_fleet(
                n, seed=seed, start_index=produced, drift_at=drift_at, bad_rate=bad_rate
            )
            for value, key in zip(batch.values, batch.keys, strict=True):
                while True:
                    try:
                        producer.produce(topic, value=value, key=key)
                        break
                    except BufferError:
                        producer.poll(0.05)
            producer.poll(0)
            produced += n
            if rate > 0:
                ahead = produced / rate - (time.monotonic() - started)
                if ahead > 0:
                    if stop is not None:
                        stop.wait(ahead)
                    else:
                        time.sleep(ahead)
    finally:
        producer.flush(30)
    return produced


def demo_config(bootstrap: str, metrics_port: int, baseline_events: int = 20_000) -> Config:
    """The demo's configuration (the same shape as deploy/examples/sensors.yaml)."""
    raw: dict[str, Any] = {
        "kafka": {"bootstrap.servers": bootstrap, "session.timeout.ms": 6000},
        "group": "driftwarden-demo",
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "summary_interval": "3s",
        "dead_letter_topic": "driftwarden.dlq",
        "streams": [
            {
                **DEMO_STREAM,
                "baseline": {"first_events": baseline_events},
                "window": {"events": 5000, "step": 1000},
            }
        ],
        "alerts": {
            "topic": "driftwarden.alerts",
            "retrain_topic": "ml.retrain.requests",
            "cooldown": "1m",
        },
    }
    return parse_config(yaml.safe_load(yaml.safe_dump(raw)), env={})


def run_demo(seconds: float = 60.0, rate: float = 5000.0, metrics_port: int = 9108) -> int:
    """Run the whole demo for ``seconds`` and print what happened."""
    from connectors.embedded import EmbeddedBroker
    from monitor.service import Service

    total = int(seconds * rate)
    drift_at = int(total * 0.5)
    with EmbeddedBroker() as broker:
        print(f"broker: embedded Kafka-protocol broker on {broker.bootstrap}", flush=True)
        config = demo_config(
            broker.bootstrap, metrics_port, baseline_events=min(20_000, drift_at // 2)
        )
        stop = threading.Event()
        producer = threading.Thread(
            target=produce_fleet,
            kwargs={
                "bootstrap": broker.bootstrap,
                "topic": "iot.sensors",
                "events": total,
                "rate": rate,
                "drift_at": drift_at,
                "stop": stop,
            },
            name="producer",
            daemon=True,
        )
        create_topic(broker.bootstrap, "iot.sensors", 3)
        producer.start()
        print(
            f"producer: 100 devices, {rate:,.0f} events/s for {seconds:.0f}s, ~3% bad records, "
            f"vibration and status drift from event {drift_at:,}",
            flush=True,
        )
        service = Service(config)
        host, port = service.metrics_address or ("127.0.0.1", metrics_port)
        print(
            f"monitor: metrics on http://{host}:{port}/metrics (also /healthz, /readyz)", flush=True
        )
        from monitor.cli import _install_stop

        def stop_all() -> None:
            stop.set()
            service.stop()

        _install_stop(stop_all)
        stats = service.run(
            max_seconds=seconds + 5, on_summary=lambda s: print("monitor:", s, flush=True)
        )
        stop.set()
        producer.join(10)
    print(
        f"done: events={stats.events:,} accepted={stats.accepted:,} invalid={stats.invalid:,} "
        f"by reason={dict(sorted(stats.rejected.items()))}",
        flush=True,
    )
    return 0
