"""A broker that freezes for 30 s mid-stream: not ready meanwhile, nothing lost after."""

from __future__ import annotations

import copy
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from connectors.embedded import EmbeddedBroker, free_port
from monitor.dev.synthetic import DEMO_STREAM, generate_fleet
from monitor.runtime.state import StateStore
from tests.integration.test_scale import (
    PARTITIONS,
    LiveProducer,
    Replica,
    _baseline_file,
    _checkpoints,
    _raw_config,
    _reference,
    wait_for_checkpoints,
)
from tests.kafka_utils import assert_same, create_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return int(exc.code)
    except OSError:
        return 0


def test_broker_stall_is_survived_without_restart(tmp_path: Path, unique: str) -> None:
    total = 80_000
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap
        topic = f"iot.{unique}"
        create_topics(bootstrap, {topic: PARTITIONS, f"dlq.{unique}": 1})
        events = generate_fleet(total, seed=31, bad_rate=0.01, drift_at=total // 2)
        baseline = _baseline_file(tmp_path, copy.deepcopy(DEMO_STREAM), events.values[:20_000])
        raw = _raw_config(bootstrap, topic, f"g-{unique}", unique, baseline)
        port = free_port()
        raw["metrics"] = {"listen": f"127.0.0.1:{port}"}
        path = tmp_path / "replica.yaml"
        path.write_text(yaml.safe_dump(raw))
        store = StateStore({"bootstrap.servers": bootstrap}, raw["state"]["topic"])
        replica = Replica(path, "stall", tmp_path)
        replica.start()
        producer = LiveProducer(bootstrap, topic, events.values, events.keys, rate=4_000)
        try:
            deadline = time.monotonic() + 60
            while _readyz(port) != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert _readyz(port) == 200
            producer.start()
            time.sleep(4)
            broker.pause()
            seen: set[int] = set()
            stall_end = time.monotonic() + 30
            while time.monotonic() < stall_end:
                seen.add(_readyz(port))
                time.sleep(0.5)
            broker.resume()
            assert 503 in seen, f"/readyz answered {seen} while the broker was frozen"
            producer.join(120)
            assert not producer.failures
            produced = producer.per_partition
            assert sum(produced.values()) == total
            wait_for_checkpoints(store, raw, topic, produced, 120)
            assert _readyz(port) == 200
            assert replica.starts == 1 and replica.proc is not None and replica.proc.poll() is None
            assert replica.signal(signal.SIGTERM) == 0
        finally:
            broker.resume()
            if replica.proc is not None and replica.proc.poll() is None:
                replica.proc.kill()
                replica.proc.wait(10)
        final = _checkpoints(store, raw, topic)
        store.close()
        assert {p: c.offset for p, c in final.items()} == produced
        reference_raw = _raw_config(bootstrap, topic, f"ref-{unique}", f"{unique}ref", baseline)
        reference = _reference(reference_raw, topic, total)
        for p in range(PARTITIONS):
            assert_same(final[p].state, reference[p], f"partition {p}")
