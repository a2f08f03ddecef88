"""Helpers shared by the benchmarks: the machine they ran on, the wide input stream."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def run_child(cmd: list[str], name: str) -> dict[str, Any] | None:
    """Run one measuring child process; its last JSON line, or None (the failure is
    printed to stderr)."""
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    row: dict[str, Any] = json.loads(lines[-1])
    return row


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def produce_wide(
    bootstrap: str, topic: str, events: int, fields: int, partitions: int, *, keyed: bool = False
) -> float:
    """Produce ``events`` all-good events of ``fields`` floats (``monitor.dev.synthetic``);
    return the seconds it took. ``keyed`` spreads them over 1,000 keys."""
    from confluent_kafka import Producer

    from monitor.dev.demo import create_topic
    from monitor.dev.producing import produce_waiting
    from monitor.dev.synthetic import generate_wide

    create_topic(bootstrap, topic, partitions)
    payloads = generate_wide(min(events, 200_000), fields=fields)
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000}
    )
    t0 = time.perf_counter()
    for i in range(events):
        key = b"k%d" % (i % 1000) if keyed else None
        produce_waiting(producer, topic, wait=0.01, value=payloads[i % len(payloads)], key=key)
    producer.flush(120)
    return time.perf_counter() - t0
